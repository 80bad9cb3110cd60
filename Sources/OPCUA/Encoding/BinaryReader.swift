/// Limits the decoder enforces on whatever a server sends: a length, count or nesting depth over
/// its limit is refused before anything is allocated for it.
public struct UAEncodingLimits: Sendable, Hashable {
    /// Longest String / XmlElement, in bytes.
    public var maxStringBytes: Int
    /// Longest ByteString, in bytes.
    public var maxByteStringBytes: Int
    /// Most elements in one array.
    public var maxArrayLength: Int
    /// Deepest nesting of Variant / DataValue / DiagnosticInfo / ExtensionObject.
    public var maxDepth: Int

    public init(maxStringBytes: Int = 1 << 20, maxByteStringBytes: Int = 4 << 20,
                maxArrayLength: Int = 100_000, maxDepth: Int = 16) {
        self.maxStringBytes = maxStringBytes
        self.maxByteStringBytes = maxByteStringBytes
        self.maxArrayLength = maxArrayLength
        self.maxDepth = maxDepth
    }

    public static let `default` = UAEncodingLimits()
}

/// Why a message could not be decoded, and where: the byte offset and the field being read.
public struct UADecodingError: Error, Sendable, Hashable, CustomStringConvertible {
    public enum Kind: Sendable, Hashable {
        /// The message ends before the field does.
        case truncated(needed: Int, available: Int)
        /// A length or count below -1.
        case negativeLength(Int)
        /// A length or count over the configured limit (or over the bytes left).
        case overLimit(length: Int, limit: Int)
        /// Nesting deeper than `maxDepth`.
        case tooDeep(limit: Int)
        /// A value no encoding allows (an unknown NodeId encoding byte, Variant type …).
        case invalid(String)
        /// Bytes left over after the message's last field.
        case trailingBytes(Int)
    }

    public var kind: Kind
    /// Byte offset in the message body where the field starts.
    public var offset: Int
    /// The field, e.g. `String`, `NodeId`, `ReadResponse.Results`.
    public var field: String

    public init(_ kind: Kind, offset: Int, field: String) {
        self.kind = kind
        self.offset = offset
        self.field = field
    }

    public var description: String {
        let what: String
        switch kind {
        case .truncated(let n, let a): what = "truncated: needs \(n) bytes, \(a) left"
        case .negativeLength(let l): what = "negative length \(l)"
        case .overLimit(let l, let lim): what = "length \(l) over the limit of \(lim)"
        case .tooDeep(let lim): what = "nested deeper than \(lim)"
        case .invalid(let s): what = s
        case .trailingBytes(let n): what = "\(n) bytes left over"
        }
        return "cannot decode \(field) at byte \(offset): \(what)"
    }
}

/// Reads the OPC UA binary encoding (little-endian) from a byte buffer. Every read checks the
/// bytes left first; lengths and counts are checked against `limits` and against the bytes left
/// before any storage is reserved, so a hostile length costs nothing.
public struct UABinaryReader {
    public let bytes: [UInt8]
    public private(set) var position: Int
    public let limits: UAEncodingLimits
    /// Current nesting depth (Variant in Variant, DataValue in Variant, …).
    var depth = 0

    public init(_ bytes: [UInt8], position: Int = 0, limits: UAEncodingLimits = .default) {
        self.bytes = bytes
        self.position = min(max(0, position), bytes.count)
        self.limits = limits
    }

    public var remaining: Int { bytes.count - position }

    /// Throws unless every byte was read.
    public func expectEnd(_ field: String) throws(UADecodingError) {
        if remaining != 0 { throw UADecodingError(.trailingBytes(remaining), offset: position, field: field) }
    }

    @inline(__always)
    mutating func need(_ n: Int, _ field: String) throws(UADecodingError) {
        if n > remaining { throw UADecodingError(.truncated(needed: n, available: remaining), offset: position, field: field) }
    }

    public mutating func readUInt8(_ field: String = "Byte") throws(UADecodingError) -> UInt8 {
        try need(1, field)
        defer { position += 1 }
        return bytes[position]
    }

    /// A little-endian integer of `T`'s width.
    public mutating func readInteger<T: FixedWidthInteger>(_: T.Type = T.self, _ field: String) throws(UADecodingError) -> T {
        let size = MemoryLayout<T>.size
        try need(size, field)
        var v: T = 0
        for i in 0..<size { v |= T(truncatingIfNeeded: bytes[position + i]) << (8 * i) }
        position += size
        return v
    }

    public mutating func readBool(_ field: String = "Boolean") throws(UADecodingError) -> Bool { try readUInt8(field) != 0 }
    public mutating func readUInt16(_ field: String = "UInt16") throws(UADecodingError) -> UInt16 { try readInteger(UInt16.self, field) }
    public mutating func readUInt32(_ field: String = "UInt32") throws(UADecodingError) -> UInt32 { try readInteger(UInt32.self, field) }
    public mutating func readInt32(_ field: String = "Int32") throws(UADecodingError) -> Int32 { try readInteger(Int32.self, field) }
    public mutating func readInt64(_ field: String = "Int64") throws(UADecodingError) -> Int64 { try readInteger(Int64.self, field) }
    public mutating func readFloat(_ field: String = "Float") throws(UADecodingError) -> Float { Float(bitPattern: try readUInt32(field)) }
    public mutating func readDouble(_ field: String = "Double") throws(UADecodingError) -> Double {
        Double(bitPattern: try readInteger(UInt64.self, field))
    }

    /// Exactly `n` raw bytes (`n` already checked by the caller against a limit).
    public mutating func readBytes(_ n: Int, _ field: String) throws(UADecodingError) -> [UInt8] {
        try need(n, field)
        defer { position += n }
        return Array(bytes[position..<position + n])
    }

    /// Skips `n` bytes.
    public mutating func skip(_ n: Int, _ field: String) throws(UADecodingError) {
        try need(n, field)
        position += n
    }

    /// An Int32 length prefix: nil for -1 (null), refused below -1, over `limit`, or over the
    /// bytes left when each element takes at least `minElementBytes`.
    public mutating func readLength(limit: Int, minElementBytes: Int, _ field: String) throws(UADecodingError) -> Int? {
        let start = position
        let n = Int(try readInt32(field))
        if n == -1 { return nil }
        if n < -1 { throw UADecodingError(.negativeLength(n), offset: start, field: field) }
        if n > limit { throw UADecodingError(.overLimit(length: n, limit: limit), offset: start, field: field) }
        if minElementBytes > 0, n > remaining / minElementBytes {
            throw UADecodingError(.truncated(needed: n * minElementBytes, available: remaining), offset: position, field: field)
        }
        return n
    }

    /// A String: nil for the null string. Invalid UTF-8 is refused.
    public mutating func readString(_ field: String = "String") throws(UADecodingError) -> String? {
        let start = position
        guard let n = try readLength(limit: limits.maxStringBytes, minElementBytes: 1, field) else { return nil }
        let raw = bytes[position..<position + n]
        position += n
        guard let s = String(validating: raw, as: UTF8.self) else {
            throw UADecodingError(.invalid("not valid UTF-8"), offset: start, field: field)
        }
        return s
    }

    /// A ByteString: nil for the null ByteString.
    public mutating func readByteString(_ field: String = "ByteString") throws(UADecodingError) -> [UInt8]? {
        guard let n = try readLength(limit: limits.maxByteStringBytes, minElementBytes: 1, field) else { return nil }
        return try readBytes(n, field)
    }

    /// An array: a count (null reads as empty), then each element. `minElementBytes` is the
    /// smallest encoding an element can have, so a count the bytes left cannot hold is refused
    /// before any storage is reserved.
    public mutating func readArray<T>(_ field: String, minElementBytes: Int = 1,
                                      _ element: (inout UABinaryReader) throws(UADecodingError) -> T) throws(UADecodingError) -> [T] {
        guard let n = try readLength(limit: limits.maxArrayLength, minElementBytes: max(1, minElementBytes), field) else { return [] }
        var out: [T] = []
        out.reserveCapacity(n)
        for _ in 0..<n { out.append(try element(&self)) }
        return out
    }

    /// Runs `body` one nesting level deeper; refuses past `maxDepth`.
    mutating func nested<T>(_ field: String, _ body: (inout UABinaryReader) throws(UADecodingError) -> T) throws(UADecodingError) -> T {
        if depth >= limits.maxDepth { throw UADecodingError(.tooDeep(limit: limits.maxDepth), offset: position, field: field) }
        depth += 1
        defer { depth -= 1 }
        return try body(&self)
    }

    /// An error about the field starting at `offset`.
    func invalid(_ what: String, at offset: Int, _ field: String) -> UADecodingError {
        UADecodingError(.invalid(what), offset: offset, field: field)
    }
}

/// Writes the OPC UA binary encoding (little-endian).
public struct UABinaryWriter: Sendable {
    public private(set) var bytes: [UInt8] = []

    public init(capacity: Int = 256) { bytes.reserveCapacity(capacity) }

    public mutating func writeUInt8(_ v: UInt8) { bytes.append(v) }
    public mutating func writeBool(_ v: Bool) { bytes.append(v ? 1 : 0) }

    public mutating func writeInteger<T: FixedWidthInteger>(_ v: T) {
        for i in 0..<MemoryLayout<T>.size { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * i))) }
    }

    public mutating func writeUInt16(_ v: UInt16) { writeInteger(v) }
    public mutating func writeUInt32(_ v: UInt32) { writeInteger(v) }
    public mutating func writeInt32(_ v: Int32) { writeInteger(v) }
    public mutating func writeInt64(_ v: Int64) { writeInteger(v) }
    public mutating func writeFloat(_ v: Float) { writeInteger(v.bitPattern) }
    public mutating func writeDouble(_ v: Double) { writeInteger(v.bitPattern) }
    public mutating func writeBytes(_ v: [UInt8]) { bytes.append(contentsOf: v) }

    /// A String (nil: the null string, length -1).
    public mutating func writeString(_ s: String?) {
        guard let s else { writeInt32(-1); return }
        let utf8 = Array(s.utf8)
        writeInt32(Int32(clamping: utf8.count))
        bytes.append(contentsOf: utf8)
    }

    /// A ByteString (nil: the null ByteString).
    public mutating func writeByteString(_ b: [UInt8]?) {
        guard let b else { writeInt32(-1); return }
        writeInt32(Int32(clamping: b.count))
        bytes.append(contentsOf: b)
    }

    /// An array: its count, then each element.
    public mutating func writeArray<T>(_ elements: [T], _ element: (inout UABinaryWriter, T) -> Void) {
        writeInt32(Int32(clamping: elements.count))
        for e in elements { element(&self, e) }
    }

    /// Overwrites 4 bytes at `offset` (a length patched in after the body is written).
    public mutating func patchUInt32(_ v: UInt32, at offset: Int) {
        for i in 0..<4 { bytes[offset + i] = UInt8(truncatingIfNeeded: v >> (8 * i)) }
    }
}
