import Testing
@testable import TibetTwin

// The decoding matrix of issue 2: every numeric type × word order × scale/offset, with negative
// values, extremes, NaN and ±Inf, checked against a reference layout written independently of
// `RegisterDecoder` (big-endian bytes, then the order's permutation), plus bits and strings.

/// The registers a raw bit pattern occupies: its bytes big-endian (ABCD), then permuted.
/// 64-bit values follow the same pattern: CDAB reverses the words (GH EF CD AB), BADC swaps the
/// bytes of each word (BA DC FE HG), DCBA reverses all bytes.
private func referenceWords(_ raw: UInt64, registers n: Int, order: WordOrder) -> [UInt16] {
    var bytes = (0..<(2 * n)).map { i in UInt8(truncatingIfNeeded: raw >> (8 * UInt64(2 * n - 1 - i))) }
    switch order {
    case .ABCD: break
    case .CDAB:
        bytes = stride(from: 2 * n - 2, through: 0, by: -2).flatMap { [bytes[$0], bytes[$0 + 1]] }
    case .BADC:
        bytes = stride(from: 0, to: 2 * n, by: 2).flatMap { [bytes[$0 + 1], bytes[$0]] }
    case .DCBA:
        bytes.reverse()
    }
    return stride(from: 0, to: 2 * n, by: 2).map { UInt16(bytes[$0]) << 8 | UInt16(bytes[$0 + 1]) }
}

/// One sample: the raw bit pattern in the register(s) and the unscaled value it means.
private struct Sample {
    var raw: UInt64
    var value: Value
}

private func samples(_ type: ValueType) -> [Sample] {
    func i(_ v: Int64, bits: Int) -> Sample {
        Sample(raw: UInt64(bitPattern: v) & (bits == 64 ? UInt64.max : (1 << UInt64(bits)) - 1), value: .int(v))
    }
    func u(_ v: UInt64) -> Sample { Sample(raw: v, value: .uint(v)) }
    func f(_ v: Float) -> Sample { Sample(raw: UInt64(v.bitPattern), value: .double(Double(v))) }
    func d(_ v: Double) -> Sample { Sample(raw: v.bitPattern, value: .double(v)) }
    switch type {
    case .int16: return [0, 1, -1, 1234, -1234, 32767, -32768].map { i($0, bits: 16) }
    case .uint16: return [0, 1, 4711, 0x8000, 65535].map(u)
    case .int32: return [0, -1, 123_456_789, -123_456_789, Int64(Int32.max), Int64(Int32.min)].map { i($0, bits: 32) }
    case .uint32: return [0, 1, 0x1122_3344, 0x8000_0000, UInt64(UInt32.max)].map(u)
    case .int64: return [0, -1, 9_876_543_210, -9_876_543_210, Int64.max, Int64.min].map { i($0, bits: 64) }
    case .uint64: return [0, 0x1122_3344_5566_7788, 1 << 63, UInt64.max].map(u)
    case .float32:
        return [0, -0.0, 12.5, -12.5, 3.4e38, -Float.leastNormalMagnitude, Float.leastNonzeroMagnitude,
                .infinity, -.infinity, .nan].map(f)
    case .float64:
        return [0, -0.0, 12.5, -12.5, 1.7976931348623157e308, -2.2250738585072014e-308,
                Double.leastNonzeroMagnitude, .infinity, -.infinity, .nan].map(d)
    case .bool, .string, .int8, .uint8: return []  // int8 and uint8: FieldbusMapTests
    }
}

/// Equal values, with NaN equal to NaN (a NaN reading must decode as NaN, not as some number).
private func same(_ a: Value, _ b: Value) -> Bool {
    if case .double(let x) = a, case .double(let y) = b {
        return (x.isNaN && y.isNaN) || (x == y && x.sign == y.sign)
    }
    return a == b
}

private let numericTypes: [ValueType] = [.int16, .uint16, .int32, .uint32, .int64, .uint64, .float32, .float64]
private let scales: [(scale: Double, offset: Double)] = [(1, 0), (0.1, 0), (2, -40), (-0.5, 3.25), (1, 100)]

@Suite("Register decoding matrix")
struct DecodingMatrixTests {
    @Test(arguments: numericTypes, WordOrder.allCases)
    func everyTypeOrderAndScale(type: ValueType, order: WordOrder) throws {
        let n = type.fixedRegisterCount!
        for s in samples(type) {
            let words = referenceWords(s.raw, registers: n, order: order)
            for (scale, offset) in scales {
                let spec = RegisterSpec(name: "v", address: 10, type: type, order: order, scale: scale, offset: offset)
                let got = try RegisterDecoder.decode(spec, words: words)
                let expected: Value = spec.isScaled ? .double(s.value.number! * scale + offset) : s.value
                #expect(same(got, expected), "\(type) \(order) raw=\(String(s.raw, radix: 16)) scale=\(scale) offset=\(offset): \(got) ≠ \(expected)")
                // The encoder lays out the same registers (the simulator relies on it).
                if !spec.isScaled, !(s.value.number?.isNaN ?? false) {
                    #expect(RegisterDecoder.encode(s.value, as: spec) == words, "encode \(type) \(order) \(s.value)")
                }
            }
        }
    }

    @Test(arguments: WordOrder.allCases)
    func sixtyFourBitOrdersLayOutLikeTelegraf(order: WordOrder) throws {
        // 0x1122334455667788 as ABCDEFGH, GHEFCDAB, BADCFEHG, HGFEDCBA.
        let expected: [WordOrder: [UInt16]] = [
            .ABCD: [0x1122, 0x3344, 0x5566, 0x7788], .CDAB: [0x7788, 0x5566, 0x3344, 0x1122],
            .BADC: [0x2211, 0x4433, 0x6655, 0x8877], .DCBA: [0x8877, 0x6655, 0x4433, 0x2211],
        ]
        let spec = RegisterSpec(name: "v", address: 0, type: .uint64, order: order)
        #expect(try RegisterDecoder.decode(spec, words: expected[order]!) == .uint(0x1122_3344_5566_7788))
        #expect(referenceWords(0x1122_3344_5566_7788, registers: 4, order: order) == expected[order]!)
    }

    @Test func scaledEncodingRoundTrips() throws {
        for (type, value) in [(ValueType.int16, -11.5), (.uint16, 6553.5), (.int32, -40.0), (.uint32, 1.5), (.int64, -7.25), (.float32, 12.25), (.float64, -0.125)] {
            let spec = RegisterSpec(name: "v", address: 0, type: type, scale: 0.25, offset: -1)
            let back = try RegisterDecoder.decode(spec, words: RegisterDecoder.encode(.double(value), as: spec))
            #expect(back == .double(value), "\(type)")
        }
    }

    @Test(arguments: 0..<16)
    func everyBitOfARegister(bit: Int) throws {
        let word: UInt16 = 0b1010_0110_0101_1001
        let spec = RegisterSpec(name: "b", address: 7, bit: bit)
        #expect(spec.type == .bool && spec.width == 1)
        #expect(try RegisterDecoder.decode(spec, words: [word]) == .bool((word >> UInt16(bit)) & 1 == 1))
        // Only the register's own bit counts: the others set or clear change nothing.
        #expect(try RegisterDecoder.decode(spec, words: [~word]) == .bool((word >> UInt16(bit)) & 1 == 0))
        // encode writes the bit's value into a bare register (the simulator merges bits per register).
        #expect(RegisterDecoder.encode(.bool(true), as: spec) == [1])
    }

    @Test func boolRegisterAndBitTables() throws {
        let flag = RegisterSpec(name: "f", address: 0, type: .bool)
        #expect(try RegisterDecoder.decode(flag, words: [0]) == .bool(false))
        #expect(try RegisterDecoder.decode(flag, words: [0x8000]) == .bool(true))
        let coil = RegisterSpec(name: "c", table: .coil, address: 3, type: .int16)
        #expect(coil.type == .bool && coil.width == 1)
        #expect(try RegisterDecoder.decode(coil, bits: [1]) == .bool(true))
        #expect(try RegisterDecoder.decode(coil, bits: [0]) == .bool(false))
        #expect(throws: DecodeError(register: "c", kind: .shortInput(needed: 1, got: 0))) {
            try RegisterDecoder.decode(coil, bits: [UInt8]())
        }
    }

    @Test(arguments: [
        // (words, order, expected): high byte first; BADC swaps each word's bytes; CDAB never
        // reverses a string's words; trailing NULs and spaces are padding; a NUL ends the text.
        ([0x7632, 0x2E31], WordOrder.ABCD, "v2.1"), ([0x7632, 0x2E31], .CDAB, "v2.1"),
        ([0x3276, 0x312E], .BADC, "v2.1"), ([0x3276, 0x312E], .DCBA, "v2.1"),
        ([0x4142, 0x4300], .ABCD, "ABC"), ([0x4142, 0x2020], .ABCD, "AB"), ([0x4100, 0x4243], .ABCD, "A"),
        ([0x0000, 0x0000], .ABCD, ""), ([0x20C2, 0xB043], .ABCD, " °C"),
    ] as [([UInt16], WordOrder, String)])
    func strings(words: [UInt16], order: WordOrder, expected: String) throws {
        let spec = RegisterSpec(name: "s", address: 0, type: .string, order: order, length: 2)
        #expect(try RegisterDecoder.decode(spec, words: words) == .string(expected))
        #expect(try RegisterDecoder.decode(spec, words: RegisterDecoder.encode(.string(expected), as: spec)) == .string(expected))
    }

    @Test func invalidUTF8AndShortInputAreErrors() {
        let spec = RegisterSpec(name: "s", address: 0, type: .string, length: 2)
        #expect(throws: DecodeError(register: "s", kind: .invalidUTF8)) {
            try RegisterDecoder.decode(spec, words: [0x41FF, 0xFE42])
        }
        #expect(throws: DecodeError(register: "s", kind: .shortInput(needed: 2, got: 1))) {
            try RegisterDecoder.decode(spec, words: [0x4142])
        }
        for type in numericTypes {
            let s = RegisterSpec(name: "n", address: 0, type: type)
            let need = type.fixedRegisterCount!
            #expect(throws: DecodeError(register: "n", kind: .shortInput(needed: need, got: need - 1))) {
                try RegisterDecoder.decode(s, words: [UInt16](repeating: 0, count: need - 1))
            }
        }
    }

    @Test func wordsMayBeASliceOfALargerRead() throws {
        // The poller decodes from slices of one grouped read; indices need not start at 0.
        let read: [UInt16] = [0xDEAD, 0x4148, 0x0000, 0xBEEF]
        let spec = RegisterSpec(name: "v", address: 101, type: .float32)
        #expect(try RegisterDecoder.decode(spec, words: read[1...2]) == .double(12.5))
        let bit = RegisterSpec(name: "b", address: 103, bit: 0)
        #expect(try RegisterDecoder.decode(bit, words: read[3...]) == .bool(true))
    }
}
