import Testing
import TestSupport
@testable import OPCUA

/// Encodes with `body` and returns the bytes.
private func encoded(_ body: (inout UABinaryWriter) -> Void) -> [UInt8] {
    var w = UABinaryWriter()
    body(&w)
    return w.bytes
}

/// The decoding error `body` throws on `bytes`, or nil when it decodes.
private func decodingError(_ bytes: [UInt8], limits: UAEncodingLimits = .default,
                           _ body: (inout UABinaryReader) throws(UADecodingError) -> Void) -> UADecodingError? {
    var r = UABinaryReader(bytes, limits: limits)
    do { try body(&r); return nil } catch { return error }
}

@Suite("OPC UA binary encoding")
struct BinaryEncodingTests {
    @Test("integers and floats are little-endian")
    func integers() throws {
        let b = encoded { $0.writeUInt16(0x0102); $0.writeInt32(-2); $0.writeInt64(0x0102030405060708); $0.writeDouble(1.5); $0.writeFloat(-0.25) }
        #expect(Array(b[0..<2]) == [0x02, 0x01])
        #expect(Array(b[2..<6]) == [0xFE, 0xFF, 0xFF, 0xFF])
        #expect(Array(b[6..<14]) == [8, 7, 6, 5, 4, 3, 2, 1])
        var r = UABinaryReader(b)
        #expect(try r.readUInt16() == 0x0102)
        #expect(try r.readInt32() == -2)
        #expect(try r.readInt64() == 0x0102030405060708)
        #expect(try r.readDouble() == 1.5)
        #expect(try r.readFloat() == -0.25)
        try r.expectEnd("test")
    }

    @Test("strings: null, empty, UTF-8; invalid UTF-8 is refused")
    func strings() throws {
        let b = encoded { $0.writeString(nil); $0.writeString(""); $0.writeString("Kran ü") }
        #expect(Array(b[0..<4]) == [0xFF, 0xFF, 0xFF, 0xFF])
        var r = UABinaryReader(b)
        #expect(try r.readString() == nil)
        #expect(try r.readString() == "")
        #expect(try r.readString() == "Kran ü")
        let bad = decodingError([2, 0, 0, 0, 0xC3, 0x28]) { r throws(UADecodingError) in _ = try r.readString() }
        #expect(bad?.kind == .invalid("not valid UTF-8"))
    }

    @Test("hostile lengths are refused before anything is allocated", arguments: [
        ([0xFF, 0xFF, 0xFF, 0x7F] as [UInt8], "over limit"),  // Int32.max
        ([0xFE, 0xFF, 0xFF, 0xFF], "negative"),  // -2
        ([0x00, 0x00, 0x01, 0x00], "over what is left"),  // 65536 with nothing after it
    ])
    func hostileLengths(bytes: [UInt8], what: String) {
        let s = decodingError(bytes) { r throws(UADecodingError) in _ = try r.readString() }
        let bs = decodingError(bytes) { r throws(UADecodingError) in _ = try r.readByteString() }
        let arr = decodingError(bytes) { r throws(UADecodingError) in _ = try r.readArray("Test") { (e: inout UABinaryReader) throws(UADecodingError) in try e.readUInt8() } }
        for e in [s, bs, arr] {
            guard let e else { Issue.record("\(what): decoded"); continue }
            switch (what, e.kind) {
            case ("over limit", .overLimit), ("negative", .negativeLength), ("over what is left", .truncated): break
            default: Issue.record("\(what): \(e)")
            }
        }
    }

    @Test("a count the bytes left cannot hold is refused for wide elements")
    func arrayCountVersusBytesLeft() {
        // 1000 Doubles announced, 16 bytes follow.
        let bytes: [UInt8] = [0xE8, 0x03, 0, 0] + [UInt8](repeating: 0, count: 16)
        let e = decodingError(bytes) { r throws(UADecodingError) in _ = try r.readArray("Doubles", minElementBytes: 8) { (x: inout UABinaryReader) throws(UADecodingError) in try x.readDouble() } }
        #expect(e.map { if case .truncated = $0.kind { true } else { false } } == true)
        #expect(e?.field == "Doubles")
    }

    @Test("configured limits apply")
    func limits() {
        let limits = UAEncodingLimits(maxStringBytes: 4, maxByteStringBytes: 4, maxArrayLength: 2, maxDepth: 3)
        let long = encoded { $0.writeString("12345") }
        #expect(decodingError(long, limits: limits) { r throws(UADecodingError) in _ = try r.readString() }?.kind == .overLimit(length: 5, limit: 4))
        let array = encoded { w in w.writeVariant(.array(.byte, [.byte(1), .byte(2), .byte(3)], dimensions: nil)) }
        #expect(decodingError(array, limits: limits) { r throws(UADecodingError) in _ = try r.readVariant() }?.kind == .overLimit(length: 3, limit: 2))
    }

    @Test("NodeId: every binary encoding, with known bytes")
    func nodeIdEncodings() throws {
        let cases: [(NodeId, [UInt8])] = [
            (.numeric(85), [0x00, 0x55]),
            (.numeric(631), [0x01, 0x00, 0x77, 0x02]),
            (.numeric(5001, namespace: 2), [0x01, 0x02, 0x89, 0x13]),
            (.numeric(70000, namespace: 300), [0x02, 0x2C, 0x01, 0x70, 0x11, 0x01, 0x00]),
            (.string("A", namespace: 2), [0x03, 0x02, 0x00, 0x01, 0x00, 0x00, 0x00, 0x41]),
            (NodeId(namespace: 1, .opaque([1, 2, 3])), [0x05, 0x01, 0x00, 0x03, 0x00, 0x00, 0x00, 1, 2, 3]),
        ]
        for (id, bytes) in cases {
            #expect(encoded { $0.writeNodeId(id) } == bytes, "\(id)")
            var r = UABinaryReader(bytes)
            #expect(try r.readNodeId() == id)
            try r.expectEnd("NodeId")
        }
        let g = try #require(UAGuid(parsing: "09087e75-8e5e-499b-954f-f2a9603db28a"))
        let gb = encoded { $0.writeNodeId(NodeId(namespace: 2, .guid(g))) }
        #expect(gb == [0x04, 0x02, 0x00, 0x75, 0x7E, 0x08, 0x09, 0x5E, 0x8E, 0x9B, 0x49, 0x95, 0x4F, 0xF2, 0xA9, 0x60, 0x3D, 0xB2, 0x8A])
        var r = UABinaryReader(gb)
        #expect(try r.readNodeId() == NodeId(namespace: 2, .guid(g)))
        #expect(decodingError([0x06, 0, 0]) { r throws(UADecodingError) in _ = try r.readNodeId() }?.kind == .invalid("unknown NodeId encoding 6"))
        #expect(decodingError([0x80, 0x01]) { r throws(UADecodingError) in _ = try r.readNodeId() } != nil)
    }

    @Test("ExpandedNodeId with namespace URI and server index")
    func expandedNodeId() throws {
        let e = ExpandedNodeId(.string("PosX", namespace: 0), namespaceUri: "urn:x", serverIndex: 3)
        let b = encoded { $0.writeExpandedNodeId(e) }
        #expect(b[0] == 0x03 | 0x80 | 0x40)
        var r = UABinaryReader(b)
        #expect(try r.readExpandedNodeId() == e)
        try r.expectEnd("ExpandedNodeId")
        #expect(e.description == "svr=3;nsu=urn:x;s=PosX")
    }

    @Test("DateTime: ticks since 1601, Unix conversion, text form")
    func dateTime() {
        #expect(UADateTime(unixNanoseconds: 0).ticks == 116_444_736_000_000_000)
        let t = UADateTime(unixNanoseconds: 1_796_542_200_123_456_000)
        #expect(t.unixNanoseconds == 1_796_542_200_123_456_000)
        #expect(t.description == "2026-12-06T07:30:00.123456Z")
        #expect(UADateTime.null.description == "-")
        #expect(UADateTime(ticks: .max).unixNanoseconds == .max)
    }

    @Test("QualifiedName, LocalizedText, ExtensionObject round-trip; unknown mask bits are refused")
    func structures() throws {
        let b = encoded { w in
            w.writeQualifiedName(QualifiedName(namespace: 2, name: "Crane01"))
            w.writeLocalizedText(LocalizedText(locale: "en", text: "Crane"))
            w.writeLocalizedText(LocalizedText(text: nil))
            w.writeExtensionObject(ExtensionObject(typeId: .numeric(321), body: .binary([1, 2])))
            w.writeExtensionObject(.empty)
        }
        var r = UABinaryReader(b)
        #expect(try r.readQualifiedName() == QualifiedName(namespace: 2, name: "Crane01"))
        #expect(try r.readLocalizedText() == LocalizedText(locale: "en", text: "Crane"))
        #expect(try r.readLocalizedText() == LocalizedText(text: nil))
        #expect(try r.readExtensionObject() == ExtensionObject(typeId: .numeric(321), body: .binary([1, 2])))
        #expect(try r.readExtensionObject() == .empty)
        try r.expectEnd("structures")
        #expect(decodingError([0x04]) { r throws(UADecodingError) in _ = try r.readLocalizedText() } != nil)
        #expect(decodingError([0x00, 0x00, 0x03]) { r throws(UADecodingError) in _ = try r.readExtensionObject() } != nil)
    }

    static let variants: [Variant] = [
        .null, .boolean(true), .sbyte(-5), .byte(200), .int16(-300), .uint16(60000), .int32(-70000),
        .uint32(4_000_000_000), .int64(-9_000_000_000), .uint64(18_000_000_000_000_000_000), .float(1.25), .double(-2.5),
        .string("Crane01"), .string(nil), .dateTime(UADateTime(ticks: 133_000_000_000_000_000)),
        .guid(UAGuid(parsing: "09087e75-8e5e-499b-954f-f2a9603db28a")!), .byteString([1, 2, 3]), .byteString(nil),
        .xmlElement("<a/>"), .nodeId(.string("x", namespace: 2)),
        .expandedNodeId(ExpandedNodeId(.numeric(5), namespaceUri: "urn:y")), .statusCode(.badNodeIdUnknown),
        .qualifiedName(QualifiedName(namespace: 1, name: "n")), .localizedText(LocalizedText(locale: "de", text: "Kran")),
        .extensionObject(ExtensionObject(typeId: .numeric(724), body: .binary([2, 0, 0, 0]))),
        .dataValue(DataValue(value: .double(1), status: .uncertain, sourceTimestamp: UADateTime(ticks: 5))),
        .array(.double, [.double(1), .double(2), .double(3), .double(4)], dimensions: [2, 2]),
        .array(.string, [.string("a"), .string(nil)], dimensions: nil),
        .array(.variant, [.variant(.int32(1)), .variant(.string("two"))], dimensions: nil),
        .array(.int32, [], dimensions: nil),
    ]

    @Test("Variant: every built-in type round-trips", arguments: variants)
    func variantRoundTrip(v: Variant) throws {
        let b = encoded { $0.writeVariant(v) }
        var r = UABinaryReader(b)
        #expect(try r.readVariant() == v)
        try r.expectEnd("Variant")
    }

    @Test("Variant: malformed encodings are refused with a typed error", arguments: [
        ([0x1A] as [UInt8], "unknown type"),
        ([0x80], "null with array flag"),
        ([0x46, 1, 0, 0, 0], "dimensions on a scalar"),
        ([0x18, 0x06, 1, 0, 0, 0], "scalar variant in variant"),
        ([0xC6, 2, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 3, 0, 0, 0], "dimensions do not match"),
        ([0xC6, 0, 0, 0, 0, 1, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF], "negative dimension"),
        ([0x0B, 1, 2, 3], "truncated double"),
    ])
    func variantMalformed(bytes: [UInt8], what: String) {
        #expect(decodingError(bytes) { r throws(UADecodingError) in _ = try r.readVariant() } != nil, "\(what)")
    }

    @Test("nesting deeper than the limit is refused, not recursed into")
    func depthBomb() {
        // 10,000 nested DataValues inside Variants: would blow the stack without a limit.
        var bytes: [UInt8] = []
        for _ in 0..<10_000 { bytes += [0x17, 0x01] }  // Variant(DataValue) with a value
        bytes += [0x00]
        let e = decodingError(bytes) { r throws(UADecodingError) in _ = try r.readVariant() }
        #expect(e?.kind == .tooDeep(limit: UAEncodingLimits.default.maxDepth))
        var diag: [UInt8] = []
        for _ in 0..<10_000 { diag += [0x40] }  // DiagnosticInfo with an inner DiagnosticInfo
        diag += [0x00]
        #expect(decodingError(diag) { r throws(UADecodingError) in try r.skipDiagnosticInfo() }?.kind == .tooDeep(limit: UAEncodingLimits.default.maxDepth))
    }

    @Test("DataValue: every mask combination round-trips in Part 6 order")
    func dataValueMasks() throws {
        for mask in 0..<64 {
            var dv = DataValue(value: mask & 1 != 0 ? .double(12.5) : .null,
                               status: mask & 2 != 0 ? .badSensorFailure : .good, hasValue: mask & 1 != 0)
            if mask & 4 != 0 { dv.sourceTimestamp = UADateTime(ticks: 1000) }
            if mask & 8 != 0 { dv.serverTimestamp = UADateTime(ticks: 2000) }
            if mask & 16 != 0 { dv.sourcePicoseconds = 7 }
            if mask & 32 != 0 { dv.serverPicoseconds = 9 }
            let b = encoded { $0.writeDataValue(dv) }
            #expect(b[0] == UInt8(mask))
            var r = UABinaryReader(b)
            #expect(try r.readDataValue() == dv)
            try r.expectEnd("DataValue")
        }
        // StatusCode, SourceTimestamp, SourcePicoseconds, ServerTimestamp: the order on the wire.
        let b: [UInt8] = [0x1E, 0x00, 0x00, 0x90, 0x40] + [1, 0, 0, 0, 0, 0, 0, 0] + [5, 0] + [2, 0, 0, 0, 0, 0, 0, 0]
        var r = UABinaryReader(b)
        let dv = try r.readDataValue()
        #expect(dv.status.name == "UncertainLastUsableValue")
        #expect(dv.status.severity == .uncertain && !dv.status.isGood)
        #expect(dv.sourceTimestamp == UADateTime(ticks: 1) && dv.sourcePicoseconds == 5 && dv.serverTimestamp == UADateTime(ticks: 2))
        #expect(decodingError([0x40]) { r throws(UADecodingError) in _ = try r.readDataValue() } != nil)
    }

    @Test("DiagnosticInfo with every field is skipped to its end")
    func diagnosticInfoSkip() throws {
        let b: [UInt8] = [0x7F, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0, 2, 0, 0, 0, 0x68, 0x69, 0, 0, 0x34, 0x80, 0x00, 0xAA]
        var r = UABinaryReader(b)
        try r.skipDiagnosticInfo()
        #expect(try r.readUInt8() == 0xAA)
    }

    @Test("every truncation of valid encodings is a typed error, never a crash")
    func truncations() {
        for v in Self.variants {
            let b = encoded { $0.writeVariant(v) }
            for n in 0..<b.count {
                #expect(decodingError(Array(b[0..<n])) { r throws(UADecodingError) in _ = try r.readVariant() } != nil)
            }
        }
    }

    @Test("random bytes never crash the decoder")
    func randomBytes() {
        var rng = SplitMix(seed: 0x5EED)
        var decoded = 0
        for _ in 0..<20_000 {
            let n = Int(rng.next() % 64)
            let bytes = (0..<n).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            if decodingError(bytes, { r throws(UADecodingError) in _ = try r.readDataValue() }) == nil { decoded += 1 }
            _ = decodingError(bytes) { r throws(UADecodingError) in _ = try r.readVariant() }
            _ = decodingError(bytes) { r throws(UADecodingError) in _ = try r.readExpandedNodeId() }
            _ = decodingError(bytes) { r throws(UADecodingError) in try r.skipDiagnosticInfo() }
        }
        #expect(decoded > 0)  // some random inputs are valid DataValues: the decoder was exercised
    }

    @Test("StatusCode severity and names")
    func statusCodes() {
        #expect(StatusCode.good.isGood && StatusCode.good.description == "Good")
        #expect(StatusCode.badNodeIdUnknown.name == "BadNodeIdUnknown")
        #expect(StatusCode(rawValue: 0x4090_0000).severity == .uncertain)
        #expect(StatusCode(rawValue: 0x808C_0400).name == "BadSensorFailure")  // info bits ignored for the name
        #expect(StatusCode(rawValue: 0x8FFF_0000).description == "Bad (0x8FFF0000)")
        #expect(StatusCode(rawValue: 0xC000_0000).isBad)
    }
}
