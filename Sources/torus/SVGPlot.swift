import Foundation

/// A line chart written as SVG: series of (x, y) points on linear or log-10 axes, with ticks,
/// axis labels and a legend. Several charts stack into one file with `SVGPlot.figure`.
struct SVGPlot {
    struct Series {
        var name: String
        var color: String
        var points: [(x: Double, y: Double)]
    }

    var title: String
    var xLabel: String
    var yLabel: String
    var series: [Series] = []
    var logY = false
    /// Axis ranges (nil: from the data).
    var xRange: ClosedRange<Double>?
    var yRange: ClosedRange<Double>?
    /// Formats x tick values.
    var xTick: (Double) -> String = { String(format: "%g", $0) }

    static let width = 720.0, height = 400.0
    static let palette = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#444444", "#e377c2"]

    /// One SVG document holding `plots` one under the other.
    static func figure(_ plots: [SVGPlot]) -> String {
        var svg = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(width))\" height=\"\(Int(height) * plots.count)\" "
            + "font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
        for (i, p) in plots.enumerated() {
            svg += "<g transform=\"translate(0,\(Int(height) * i))\">\n" + p.body() + "</g>\n"
        }
        return svg + "</svg>\n"
    }

    /// The chart's elements in a `width` x `height` box.
    func body() -> String {
        let w = Self.width, h = Self.height, left = 70.0, bottom = 50.0, top = 30.0, right = 170.0
        let all = series.flatMap(\.points).filter { !logY || $0.y > 0 }
        let xs = xRange ?? ((all.map(\.x).min() ?? 0)...max(all.map(\.x).max() ?? 1, (all.map(\.x).min() ?? 0) + 1e-9))
        var ys: ClosedRange<Double>
        if let yRange { ys = yRange } else if logY {
            let lo = floor(log10(all.map(\.y).min() ?? 1e-6)), hi = ceil(log10(all.map(\.y).max() ?? 1))
            ys = lo...max(hi, lo + 1)
        } else {
            ys = min(0, all.map(\.y).min() ?? 0)...max(all.map(\.y).max() ?? 1, 1e-9)
        }
        if logY, yRange != nil { ys = log10(ys.lowerBound)...log10(ys.upperBound) }
        func px(_ v: Double) -> Double { left + (v - xs.lowerBound) / (xs.upperBound - xs.lowerBound) * (w - left - right) }
        func py(_ v: Double) -> Double {
            let t = logY ? log10(max(v, pow(10, ys.lowerBound))) : v
            return h - bottom - (t - ys.lowerBound) / (ys.upperBound - ys.lowerBound) * (h - bottom - top)
        }
        func f(_ v: Double) -> String { String(format: "%.1f", v) }
        var svg = "<text x=\"\(f(left))\" y=\"18\" font-size=\"14\">\(escape(title))</text>\n"
        svg += "<line x1=\"\(f(left))\" y1=\"\(f(h - bottom))\" x2=\"\(f(w - right))\" y2=\"\(f(h - bottom))\" stroke=\"black\"/>\n"
        svg += "<line x1=\"\(f(left))\" y1=\"\(f(top))\" x2=\"\(f(left))\" y2=\"\(f(h - bottom))\" stroke=\"black\"/>\n"
        for i in 0...5 {
            let v = xs.lowerBound + Double(i) / 5 * (xs.upperBound - xs.lowerBound)
            svg += "<text x=\"\(f(px(v) - 12))\" y=\"\(f(h - bottom + 18))\">\(escape(xTick(v)))</text>\n"
        }
        if logY {
            for e in Int(ys.lowerBound)...Int(ys.upperBound) {
                svg += "<text x=\"8\" y=\"\(f(py(pow(10, Double(e))) + 4))\">1e\(e)</text>\n"
            }
        } else {
            for i in 0...4 {
                let v = ys.lowerBound + Double(i) / 4 * (ys.upperBound - ys.lowerBound)
                svg += "<text x=\"8\" y=\"\(f(py(v) + 4))\">\(String(format: "%g", (v * 1000).rounded() / 1000))</text>\n"
                svg += "<line x1=\"\(f(left))\" y1=\"\(f(py(v)))\" x2=\"\(f(w - right))\" y2=\"\(f(py(v)))\" stroke=\"#dddddd\"/>\n"
            }
        }
        svg += "<text x=\"\(f(left + (w - left - right) / 2 - 60))\" y=\"\(f(h - 12))\">\(escape(xLabel))</text>\n"
        svg += "<text transform=\"translate(22,\(f(top + (h - top - bottom) / 2 + 40))) rotate(-90)\" font-size=\"11\">\(escape(yLabel))</text>\n"
        for (i, s) in series.enumerated() {
            let points = s.points.filter { !logY || $0.y > 0 }.map { "\(f(px($0.x))),\(f(py($0.y)))" }
            if points.count > 1 {
                svg += "<polyline fill=\"none\" stroke=\"\(s.color)\" stroke-width=\"2\" points=\"\(points.joined(separator: " "))\"/>\n"
            }
            if points.count <= 40 {
                for p in points {
                    let xy = p.split(separator: ",")
                    svg += "<circle cx=\"\(xy[0])\" cy=\"\(xy[1])\" r=\"3.5\" fill=\"\(s.color)\"/>\n"
                }
            }
            svg += "<rect x=\"\(f(w - right + 15))\" y=\"\(f(top + 20 * Double(i)))\" width=\"12\" height=\"12\" fill=\"\(s.color)\"/>"
            svg += "<text x=\"\(f(w - right + 32))\" y=\"\(f(top + 20 * Double(i) + 11))\">\(escape(s.name))</text>\n"
        }
        return svg
    }

    private func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
    }
}
