/// Why raw registers did not decode into a value.
public struct DecodeError: Error, Sendable, Hashable, CustomStringConvertible {
    public enum Kind: Sendable, Hashable {
        /// Fewer registers (or bits) than the type needs.
        case shortInput(needed: Int, got: Int)
        /// A `string` whose bytes are not valid UTF-8.
        case invalidUTF8
    }

    public var register: String
    public var kind: Kind

    public init(register: String, kind: Kind) {
        self.register = register
        self.kind = kind
    }

    public var description: String {
        switch kind {
        case .shortInput(let needed, let got):
            return "\(register): needs \(needed) registers, got \(got)"
        case .invalidUTF8:
            return "\(register): string is not valid UTF-8"
        }
    }
}

/// Decoding is a pure function from raw registers to typed values (docs/register-maps.md): word order,
/// `bit`, then `value = raw × scale + offset`.
public enum RegisterDecoder {
    /// Decodes one value from the 16-bit registers starting at its address.
    ///
    /// `words` must start at `spec.address` and hold at least `spec.width` registers. Unscaled
    /// integers keep their integer type; scaled ones become `double`.
    public static func decode(_ spec: RegisterSpec, words: some Collection<UInt16>) throws(DecodeError) -> Value {
        let need = spec.width
        guard words.count >= need else {
            throw DecodeError(register: spec.name, kind: .shortInput(needed: need, got: words.count))
        }
        if let bit = spec.bit {
            return .bool((words[words.startIndex] >> UInt16(bit)) & 1 == 1)
        }
        if spec.type == .int8 || spec.type == .uint8 {
            // One byte of one register; word and byte orders do not apply.
            let w = words[words.startIndex]
            let b = UInt8(truncatingIfNeeded: spec.byte == .high ? w >> 8 : w)
            return spec.type == .int8 ? scaled(.int(Int64(Int8(bitPattern: b))), spec) : scaled(.uint(UInt64(b)), spec)
        }
        if spec.type != .string {
            // Fixed-width values (1–4 registers) assemble their raw bits without allocating:
            // word k lands at shift 16·(need−1−k), or 16·k when the order reverses words.
            var raw: UInt64 = 0
            var i = words.startIndex
            for k in 0..<need {
                var x = words[i]
                if spec.order.swapsBytes { x = x.byteSwapped }
                let shift = spec.order.reversesWords ? 16 * k : 16 * (need - 1 - k)
                raw |= UInt64(x) << UInt64(shift)
                i = words.index(after: i)
            }
            switch spec.type {
            case .bool:
                return .bool(raw != 0)
            case .int8, .uint8:
                break  // decoded above
            case .int16:
                return scaled(.int(Int64(Int16(bitPattern: UInt16(truncatingIfNeeded: raw)))), spec)
            case .uint16:
                return scaled(.uint(raw & 0xFFFF), spec)
            case .int32:
                return scaled(.int(Int64(Int32(bitPattern: UInt32(truncatingIfNeeded: raw)))), spec)
            case .uint32:
                return scaled(.uint(raw), spec)
            case .int64:
                return scaled(.int(Int64(bitPattern: raw)), spec)
            case .uint64:
                return scaled(.uint(raw), spec)
            case .float32:
                return scaled(.double(Double(Float(bitPattern: UInt32(truncatingIfNeeded: raw)))), spec)
            case .float64:
                return scaled(.double(Double(bitPattern: raw)), spec)
            case .string:
                break
            }
        }
        // A string: high byte first in each register (byte-swapped for BADC/DCBA, words never
        // reversed); trailing NULs and spaces are padding.
        var w = Array(words.prefix(need))
        if spec.order.swapsBytes { for i in w.indices { w[i] = w[i].byteSwapped } }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(w.count * 2)
        for x in w { bytes.append(UInt8(x >> 8)); bytes.append(UInt8(x & 0xFF)) }
        while let last = bytes.last, last == 0 || last == 0x20 { bytes.removeLast() }
        if let nul = bytes.firstIndex(of: 0) { bytes.removeSubrange(nul...) }
        guard let s = String(validating: bytes, as: UTF8.self) else {
            throw DecodeError(register: spec.name, kind: .invalidUTF8)
        }
        return .string(s)
    }

    /// Decodes one value from a bit table (coils, discrete inputs): `bits[0]` is the value's own bit.
    public static func decode(_ spec: RegisterSpec, bits: some Collection<UInt8>) throws(DecodeError) -> Value {
        guard let first = bits.first else {
            throw DecodeError(register: spec.name, kind: .shortInput(needed: 1, got: 0))
        }
        return .bool(first != 0)
    }

    @inline(__always)
    static func scaled(_ v: Value, _ spec: RegisterSpec) -> Value {
        guard spec.isScaled, let n = v.number else { return v }
        return .double(n * spec.scale + spec.offset)
    }

    /// Encodes a value into registers the way `decode` reads them back: the inverse, used by
    /// the simulator and tests. Scaled values are divided back and rounded for integer types.
    public static func encode(_ value: Value, as spec: RegisterSpec) -> [UInt16] {
        let n = spec.width
        if spec.table.isBitTable || spec.bit != nil {
            return [(value.number ?? 0) != 0 ? 1 : 0]
        }
        var raw: UInt64 = 0
        let unscaled: Double = {
            let x = value.number ?? 0
            return spec.isScaled ? (x - spec.offset) / spec.scale : x
        }()
        func clampInt(_ x: Double, _ lo: Double, _ hi: Double) -> Double {
            x.isNaN ? 0 : Swift.min(Swift.max(x.rounded(), lo), hi)
        }
        switch spec.type {
        case .bool:
            raw = unscaled != 0 ? 1 : 0
        case .int8, .uint8:
            // The byte in its half of the register, the other half 0 (the simulator merges it
            // with the register's other byte).
            let b = spec.type == .int8 ? UInt16(UInt8(bitPattern: Int8(clampInt(unscaled, -128, 127))))
                                       : UInt16(clampInt(unscaled, 0, 255))
            return [spec.byte == .high ? b << 8 : b]
        case .int16:
            raw = UInt64(UInt16(bitPattern: Int16(clampInt(unscaled, -32768, 32767))))
        case .uint16:
            raw = UInt64(clampInt(unscaled, 0, 65535))
        case .int32:
            raw = UInt64(UInt32(bitPattern: Int32(clampInt(unscaled, -2147483648, 2147483647))))
        case .uint32:
            raw = UInt64(clampInt(unscaled, 0, 4294967295))
        case .int64:
            if case .int(let i) = value, !spec.isScaled { raw = UInt64(bitPattern: i) }
            else { raw = UInt64(bitPattern: Int64(clampInt(unscaled, -9.2e18, 9.2e18))) }
        case .uint64:
            if case .uint(let u) = value, !spec.isScaled { raw = u }
            else { raw = UInt64(clampInt(unscaled, 0, 1.8e19)) }
        case .float32:
            raw = UInt64(Float(unscaled).bitPattern)
        case .float64:
            raw = Double(unscaled).bitPattern
        case .string:
            var bytes = Array((value.description).utf8.prefix(n * 2))
            while bytes.count < n * 2 { bytes.append(0) }
            var w = (0..<n).map { UInt16(bytes[2 * $0]) << 8 | UInt16(bytes[2 * $0 + 1]) }
            if spec.order.swapsBytes { for i in w.indices { w[i] = w[i].byteSwapped } }
            return w
        }
        var w = [UInt16](repeating: 0, count: n)
        for i in 0..<n { w[n - 1 - i] = UInt16(truncatingIfNeeded: raw >> (16 * UInt64(i))) }
        if spec.order.reversesWords { w.reverse() }
        if spec.order.swapsBytes { for i in w.indices { w[i] = w[i].byteSwapped } }
        return w
    }
}
