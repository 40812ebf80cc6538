import Foundation
import TorusModel
import TorusTensor

/// AdamW hyper-parameters.
public struct AdamWOptions: Codable, Equatable, Sendable {
    public var beta1: Float = 0.9
    public var beta2: Float = 0.95
    public var eps: Float = 1e-8
    public var weightDecay: Float = 0.1

    public init(beta1: Float = 0.9, beta2: Float = 0.95, eps: Float = 1e-8, weightDecay: Float = 0.1) {
        self.beta1 = beta1; self.beta2 = beta2; self.eps = eps; self.weightDecay = weightDecay
    }
}

/// AdamW with decoupled weight decay, applied to matrices only (norm weights are not decayed;
/// LLaMA has no biases). State (first and second moments) mirrors the parameter layout.
public final class AdamW: @unchecked Sendable {
    public let options: AdamWOptions
    /// First moments, same layout as the parameters.
    public let firstMoment: ParameterStore
    /// Second moments.
    public let secondMoment: ParameterStore
    /// Updates applied so far.
    public internal(set) var step: Int = 0
    private let decayMask: [(offset: Int, count: Int, decay: Bool)]

    public init(parameters: ParameterStore, options: AdamWOptions) {
        self.options = options
        firstMoment = parameters.zerosLike()
        secondMoment = parameters.zerosLike()
        decayMask = parameters.entries.map { ($0.offset, $0.count, $0.shape.count >= 2) }
    }

    /// One update of `parameters` from `gradients` at learning rate `lr`.
    public func update(parameters: ParameterStore, gradients: ParameterStore, lr: Float) {
        step += 1
        let b1 = options.beta1, b2 = options.beta2, eps = options.eps
        let c1 = 1 - powf(b1, Float(step)), c2 = 1 - powf(b2, Float(step))
        let stepSize = lr / c1
        let c2root = c2.squareRoot()
        let p = parameters.flat.pointer, g = gradients.flat.pointer
        let m = firstMoment.flat.pointer, v = secondMoment.flat.pointer
        for range in decayMask {
            let decay: Float = range.decay ? 1 - lr * options.weightDecay : 1
            let o = range.offset
            VectorMath.adamW(parameters: p + o, gradients: g + o, firstMoment: m + o, secondMoment: v + o, count: range.count,
                             beta1: b1, beta2: b2, eps: eps, decay: decay, stepSize: stepSize, biasCorrection2Root: c2root)
        }
    }

    /// Restores the step count (with moments loaded into the stores by the caller).
    public func restore(step: Int) { self.step = step }
}
