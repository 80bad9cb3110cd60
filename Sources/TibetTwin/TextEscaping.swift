extension String {
    /// The text with its control characters written out (`\n`, `\r`, `\t`, others as `\u{1b}`),
    /// and any scalar in `also` replaced by its text: so a value from a file or the network stays
    /// on one line of a message or log. The text itself when it has nothing to escape.
    public func escapingControlCharacters(also extra: [Unicode.Scalar: String] = [:]) -> String {
        guard unicodeScalars.contains(where: { $0.properties.generalCategory == .control || extra[$0] != nil }) else {
            return self
        }
        var out = ""
        for u in unicodeScalars {
            if let replacement = extra[u] {
                out += replacement
                continue
            }
            switch u {
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if u.properties.generalCategory == .control {
                    out += "\\u{" + String(u.value, radix: 16) + "}"
                } else {
                    out.unicodeScalars.append(u)
                }
            }
        }
        return out
    }
}
