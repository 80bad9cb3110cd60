#if canImport(Glibc)
import Glibc
#endif

/// An OPC UA DateTime: 100 ns ticks since 1601-01-01 00:00 UTC. 0 means "no time".
public struct UADateTime: Sendable, Hashable, Comparable, CustomStringConvertible {
    public var ticks: Int64

    /// Ticks between 1601-01-01 and 1970-01-01.
    static let unixEpochTicks: Int64 = 116_444_736_000_000_000

    public init(ticks: Int64) { self.ticks = ticks }

    /// From nanoseconds since the Unix epoch.
    public init(unixNanoseconds ns: Int64) {
        ticks = ns / 100 + Self.unixEpochTicks
    }

    /// The wall clock now (`CLOCK_REALTIME`).
    public static func now() -> UADateTime {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return UADateTime(unixNanoseconds: Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec))
    }

    public static let null = UADateTime(ticks: 0)

    /// No time given (0, or before the Unix epoch's representable range is irrelevant here).
    public var isNull: Bool { ticks <= 0 }

    /// Nanoseconds since the Unix epoch (negative before 1970); saturates at the extremes.
    public var unixNanoseconds: Int64 {
        let (t, o) = (ticks - Self.unixEpochTicks).multipliedReportingOverflow(by: 100)
        if o { return ticks > Self.unixEpochTicks ? .max : .min }
        return t
    }

    public static func < (a: UADateTime, b: UADateTime) -> Bool { a.ticks < b.ticks }

    /// RFC 3339 in UTC with microseconds (`2026-12-06T07:30:00.123456Z`), `-` for no time.
    public var description: String {
        if isNull { return "-" }
        let ns = unixNanoseconds
        let secs = ns >= 0 ? ns / 1_000_000_000 : (ns - 999_999_999) / 1_000_000_000
        let micros = (ns - secs * 1_000_000_000) / 1000
        var t = time_t(secs)
        var parts = tm()
        guard gmtime_r(&t, &parts) != nil else { return "ticks \(ticks)" }
        func pad(_ v: Int, _ w: Int) -> String {
            let s = String(v)
            return String(repeating: "0", count: max(0, w - s.count)) + s
        }
        return "\(pad(Int(parts.tm_year) + 1900, 4))-\(pad(Int(parts.tm_mon) + 1, 2))-\(pad(Int(parts.tm_mday), 2))T"
            + "\(pad(Int(parts.tm_hour), 2)):\(pad(Int(parts.tm_min), 2)):\(pad(Int(parts.tm_sec), 2)).\(pad(Int(micros), 6))Z"
    }
}

/// A name qualified by a namespace index (browse names).
public struct QualifiedName: Sendable, Hashable, CustomStringConvertible {
    public var namespace: UInt16
    public var name: String?

    public init(namespace: UInt16 = 0, name: String?) {
        self.namespace = namespace
        self.name = name
    }

    /// `2:Crane01`, or the bare name in namespace 0.
    public var description: String {
        namespace == 0 ? (name ?? "") : "\(namespace):\(name ?? "")"
    }
}

/// Text with an optional locale.
public struct LocalizedText: Sendable, Hashable, CustomStringConvertible {
    public var locale: String?
    public var text: String?

    public init(locale: String? = nil, text: String?) {
        self.locale = locale
        self.text = text
    }

    public var description: String { text ?? "" }
}

/// A structure the decoder does not unpack: its type id and its encoded body.
public struct ExtensionObject: Sendable, Hashable {
    public enum Body: Sendable, Hashable {
        case none
        case binary([UInt8])
        case xml(String?)
    }

    public var typeId: NodeId
    public var body: Body

    public init(typeId: NodeId, body: Body) {
        self.typeId = typeId
        self.body = body
    }

    public static let empty = ExtensionObject(typeId: .null, body: .none)
}

extension UABinaryReader {
    public mutating func readGuid(_ field: String = "Guid") throws(UADecodingError) -> UAGuid {
        try need(16, field)
        let d1 = try readUInt32(field), d2 = try readUInt16(field), d3 = try readUInt16(field)
        return UAGuid(data1: d1, data2: d2, data3: d3, data4: try readBytes(8, field))
    }

    public mutating func readDateTime(_ field: String = "DateTime") throws(UADecodingError) -> UADateTime {
        UADateTime(ticks: try readInt64(field))
    }

    public mutating func readStatusCode(_ field: String = "StatusCode") throws(UADecodingError) -> StatusCode {
        StatusCode(rawValue: try readUInt32(field))
    }

    public mutating func readQualifiedName(_ field: String = "QualifiedName") throws(UADecodingError) -> QualifiedName {
        let ns = try readUInt16(field)
        return QualifiedName(namespace: ns, name: try readString(field))
    }

    public mutating func readLocalizedText(_ field: String = "LocalizedText") throws(UADecodingError) -> LocalizedText {
        let start = position
        let mask = try readUInt8(field)
        guard mask & ~0x03 == 0 else { throw invalid("unknown LocalizedText mask bits \(mask)", at: start, field) }
        let locale = mask & 0x01 != 0 ? try readString(field) : nil
        let text = mask & 0x02 != 0 ? try readString(field) : nil
        return LocalizedText(locale: locale, text: text)
    }

    /// An ExtensionObject, its body kept encoded (the caller decodes the types it knows).
    public mutating func readExtensionObject(_ field: String = "ExtensionObject") throws(UADecodingError) -> ExtensionObject {
        let typeId = try readNodeId(field)
        let start = position
        switch try readUInt8(field) {
        case 0: return ExtensionObject(typeId: typeId, body: .none)
        case 1: return ExtensionObject(typeId: typeId, body: .binary(try readByteString(field) ?? []))
        case 2: return ExtensionObject(typeId: typeId, body: .xml(try readString(field)))
        case let e: throw invalid("unknown ExtensionObject encoding \(e)", at: start, field)
        }
    }

    /// Reads past a DiagnosticInfo (nested ones included, up to `maxDepth`) without keeping it:
    /// the client has no use for server diagnostics beyond the StatusCodes.
    public mutating func skipDiagnosticInfo(_ field: String = "DiagnosticInfo") throws(UADecodingError) {
        try nested(field) { (r: inout UABinaryReader) throws(UADecodingError) in
            let start = r.position
            let mask = try r.readUInt8(field)
            guard mask & 0x80 == 0 else { throw r.invalid("unknown DiagnosticInfo mask bits \(mask)", at: start, field) }
            for bit: UInt8 in [0x01, 0x02, 0x08, 0x04] where mask & bit != 0 { try r.skip(4, field) }
            if mask & 0x10 != 0 { _ = try r.readString(field) }
            if mask & 0x20 != 0 { try r.skip(4, field) }
            if mask & 0x40 != 0 { try r.skipDiagnosticInfo(field) }
        }
    }

    /// An array of DiagnosticInfo, skipped.
    public mutating func skipDiagnosticInfos(_ field: String = "DiagnosticInfos") throws(UADecodingError) {
        _ = try readArray(field) { (r: inout UABinaryReader) throws(UADecodingError) in try r.skipDiagnosticInfo(field) }
    }
}

extension UABinaryWriter {
    public mutating func writeGuid(_ g: UAGuid) {
        writeUInt32(g.data1); writeUInt16(g.data2); writeUInt16(g.data3); writeBytes(g.data4)
    }

    public mutating func writeDateTime(_ d: UADateTime) { writeInt64(d.ticks) }
    public mutating func writeStatusCode(_ s: StatusCode) { writeUInt32(s.rawValue) }

    public mutating func writeQualifiedName(_ q: QualifiedName) {
        writeUInt16(q.namespace); writeString(q.name)
    }

    public mutating func writeLocalizedText(_ t: LocalizedText) {
        writeUInt8((t.locale != nil ? 1 : 0) | (t.text != nil ? 2 : 0))
        if let l = t.locale { writeString(l) }
        if let x = t.text { writeString(x) }
    }

    public mutating func writeExtensionObject(_ e: ExtensionObject) {
        writeNodeId(e.typeId)
        switch e.body {
        case .none: writeUInt8(0)
        case .binary(let b): writeUInt8(1); writeByteString(b)
        case .xml(let s): writeUInt8(2); writeString(s)
        }
    }

    /// An ExtensionObject holding `body` encoded by `encode`, typed by its binary encoding id.
    public mutating func writeExtensionObject(typeId: NodeId, _ encode: (inout UABinaryWriter) -> Void) {
        var inner = UABinaryWriter()
        encode(&inner)
        writeExtensionObject(ExtensionObject(typeId: typeId, body: .binary(inner.bytes)))
    }

    /// A null DiagnosticInfo (mask 0).
    public mutating func writeEmptyDiagnosticInfo() { writeUInt8(0) }
}
