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
        decayMask = Self.decayRanges(of: parameters)
    }

    /// The runs of a parameter layout, each with whether it is weight-decayed (matrices are,
    /// norm weights are not).
    static func decayRanges(of parameters: ParameterStore) -> [(offset: Int, count: Int, decay: Bool)] {
        parameters.entries.map { ($0.offset, $0.count, $0.shape.count >= 2) }
    }

    /// One update of `parameters` from `gradients` at learning rate `lr`.
    public func update(parameters: ParameterStore, gradients: ParameterStore, lr: Float) {
        step += 1
        let update = AdamWStep(options: options, step: step, lr: lr)
        let p = parameters.flat.pointer, g = gradients.flat.pointer
        let m = firstMoment.flat.pointer, v = secondMoment.flat.pointer
        for range in decayMask {
            let o = range.offset
            update.apply(parameters: p + o, gradients: g + o, firstMoment: m + o, secondMoment: v + o, count: range.count, decays: range.decay)
        }
    }

    /// Restores the step count (with moments loaded into the stores by the caller).
    public func restore(step: Int) { self.step = step }
}

/// Update number `step` of AdamW at learning rate `lr` on runs of values: the bias corrections
/// and the elementwise kernel that `AdamW` and `ShardedAdamW` share.
struct AdamWStep {
    let options: AdamWOptions
    let lr: Float, stepSize: Float, biasCorrection2Root: Float

    init(options: AdamWOptions, step: Int, lr: Float) {
        self.options = options
        self.lr = lr
        stepSize = lr / (1 - powf(options.beta1, Float(step)))
        biasCorrection2Root = (1 - powf(options.beta2, Float(step))).squareRoot()
    }

    func apply(parameters: UnsafeMutablePointer<Float>, gradients: UnsafePointer<Float>, firstMoment: UnsafeMutablePointer<Float>,
               secondMoment: UnsafeMutablePointer<Float>, count: Int, decays: Bool) {
        VectorMath.adamW(parameters: parameters, gradients: gradients, firstMoment: firstMoment, secondMoment: secondMoment, count: count,
                         beta1: options.beta1, beta2: options.beta2, eps: options.eps, decay: decays ? 1 - lr * options.weightDecay : 1,
                         stepSize: stepSize, biasCorrection2Root: biasCorrection2Root)
    }
}
