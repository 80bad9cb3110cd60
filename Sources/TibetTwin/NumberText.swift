/// How precise a decoded value is, so that it prints as the shortest text that reads back the
/// same value at that precision: a `float32` 230.1 is `230.1`, not the `230.10000610351562` its
/// widening to a `Double` holds; a register scaled by 0.1 that reads 73 is `7.3`, not the
/// `7.300000000000001` the multiplication leaves.
public enum ValuePrecision: Sendable, Hashable {
    /// A `Double` computed or received as such: its own shortest round-trip text.
    case float64
    /// A 32-bit float: the shortest text that reads back the same `Float`.
    case float32
    /// A decimal fixed point: at most this many digits after the point (a register scaled by
    /// 0.1 has 1, by 0.25 has 2). Trailing zeros are left off.
    case decimals(Int)

    /// The most decimals a scale may imply before it is taken as not decimal (`1/3`).
    static let maxDecimals = 12
}

extension RegisterSpec {
    /// The precision of this register's decoded value: the type's for unscaled floats, the
    /// scale's and offset's decimal places for scaled integers, the float's own for scaled floats.
    /// Integers, booleans and strings are exact (the value is not a `Double`).
    public var precision: ValuePrecision {
        switch type {
        case .float32: return .float32
        case .float64: return .float64
        default:
            guard isScaled, let s = NumberText.decimalPlaces(scale), let o = NumberText.decimalPlaces(offset) else {
                return .float64
            }
            return .decimals(Swift.max(s, o))
        }
    }
}

/// The one formatter of numbers for people and for JSON (`read`, `status`, the status page).
public enum NumberText {
    /// The shortest text that reads back `d` at `precision`: `230.1`, `7.3`, `-0.5`, `1e-05`,
    /// `3.4028235e+38`; integral values without a trailing `.0` (`20`). Not-a-number is `nan`,
    /// infinities `inf` and `-inf` (as `Double.description` writes them).
    public static func text(_ d: Double, precision: ValuePrecision) -> String {
        guard d.isFinite else { return d.isNaN ? "nan" : (d < 0 ? "-inf" : "inf") }
        var s: String
        switch precision {
        case .float64:
            s = d.description
        case .float32:
            let f = Float(d)
            // Outside float32's range (a scaled float32): the double's own text.
            s = f.isFinite && (f != 0 || d == 0) ? f.description : d.description
        case .decimals(let n):
            s = roundedToDecimals(d, n).description
        }
        if s.hasSuffix(".0") { s.removeLast(2) }
        if s == "-0" { s = "0" }
        return s
    }

    /// `d` as the `Double` its text at `precision` reads back as: what JSON carries, so that a
    /// float32 230.1 serialises as `230.1` and still parses to the same float. Non-finite values
    /// stay as they are (JSON writes them as `null`).
    public static func value(_ d: Double, precision: ValuePrecision) -> Double {
        guard d.isFinite else { return d }
        switch precision {
        case .float64: return d
        case .float32: return Double(text(d, precision: .float32)) ?? d
        case .decimals(let n): return roundedToDecimals(d, n)
        }
    }

    /// `d` rounded to `n` decimal places: the `Double` nearest to the decimal, whose shortest
    /// text is that decimal. Values too large for the scaled product to be exact stay as they are.
    static func roundedToDecimals(_ d: Double, _ n: Int) -> Double {
        let n = Swift.min(Swift.max(n, 0), ValuePrecision.maxDecimals)
        var p = 1.0
        for _ in 0..<n { p *= 10 }
        let scaled = d * p
        guard Swift.abs(scaled) < 9_007_199_254_740_992 else { return d }  // 2^53
        let r = scaled.rounded() / p
        return r == 0 ? 0 : r
    }

    /// The decimal places of a map's `scale` or `offset` as written (0.1 → 1, 0.25 → 2, 1e-05 → 5,
    /// 10 → 0); `nil` when it is not a short decimal (1/3) or not finite.
    public static func decimalPlaces(_ x: Double) -> Int? {
        guard x.isFinite else { return nil }
        let s = x.description  // shortest round-trip digits
        var mantissa = Substring(s)
        var exponent = 0
        if let e = s.firstIndex(where: { $0 == "e" || $0 == "E" }) {
            mantissa = s[..<e]
            guard let ex = Int(s[s.index(after: e)...].replacingPlus()) else { return nil }
            exponent = ex
        }
        var places = 0
        if let dot = mantissa.firstIndex(of: ".") {
            let frac = mantissa[mantissa.index(after: dot)...]
            places = frac == "0" ? 0 : frac.count
        }
        let total = Swift.max(places - exponent, 0)
        return total <= ValuePrecision.maxDecimals ? total : nil
    }
}

extension Value {
    /// The value as people read it, at `precision` (doubles only; the rest as `description`).
    public func text(precision: ValuePrecision) -> String {
        if case .double(let d) = self { return NumberText.text(d, precision: precision) }
        return description
    }

    /// The value at `precision` (doubles only): what JSON output carries.
    public func at(precision: ValuePrecision) -> Value {
        if case .double(let d) = self { return .double(NumberText.value(d, precision: precision)) }
        return self
    }
}

extension Substring {
    fileprivate func replacingPlus() -> Substring { first == "+" ? dropFirst() : self }
}
