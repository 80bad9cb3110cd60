/// The built-in types a Variant can hold (OPC UA Part 6, 5.1.2), by their type id.
public enum BuiltinType: UInt8, Sendable, Hashable, CaseIterable {
    case boolean = 1, sbyte, byte, int16, uint16, int32, uint32, int64, uint64, float, double
    case string, dateTime, guid, byteString, xmlElement, nodeId, expandedNodeId, statusCode
    case qualifiedName, localizedText, extensionObject, dataValue, variant, diagnosticInfo

    /// The smallest number of bytes one value of the type takes, to refuse an array count the
    /// message cannot hold before reserving storage for it.
    var minEncodedBytes: Int {
        switch self {
        case .boolean, .sbyte, .byte, .localizedText, .dataValue, .variant, .diagnosticInfo: return 1
        case .int16, .uint16, .nodeId, .expandedNodeId: return 2
        case .int32, .uint32, .float, .string, .byteString, .xmlElement, .statusCode: return 4
        case .int64, .uint64, .double, .dateTime: return 8
        case .guid: return 16
        case .qualifiedName: return 6
        case .extensionObject: return 3
        }
    }

    /// The data type's NodeId in namespace 0 (i=1 Boolean … i=25 DiagnosticInfo).
    public var dataTypeId: NodeId { .numeric(UInt32(rawValue)) }

    /// `Boolean`, `Double`, `LocalizedText` …
    public var name: String {
        switch self {
        case .boolean: return "Boolean"
        case .sbyte: return "SByte"
        case .byte: return "Byte"
        case .int16: return "Int16"
        case .uint16: return "UInt16"
        case .int32: return "Int32"
        case .uint32: return "UInt32"
        case .int64: return "Int64"
        case .uint64: return "UInt64"
        case .float: return "Float"
        case .double: return "Double"
        case .string: return "String"
        case .dateTime: return "DateTime"
        case .guid: return "Guid"
        case .byteString: return "ByteString"
        case .xmlElement: return "XmlElement"
        case .nodeId: return "NodeId"
        case .expandedNodeId: return "ExpandedNodeId"
        case .statusCode: return "StatusCode"
        case .qualifiedName: return "QualifiedName"
        case .localizedText: return "LocalizedText"
        case .extensionObject: return "ExtensionObject"
        case .dataValue: return "DataValue"
        case .variant: return "Variant"
        case .diagnosticInfo: return "DiagnosticInfo"
        }
    }
}

/// A value of any built-in type, a scalar or an array of one type.
public indirect enum Variant: Sendable, Hashable, CustomStringConvertible {
    case null
    case boolean(Bool)
    case sbyte(Int8)
    case byte(UInt8)
    case int16(Int16)
    case uint16(UInt16)
    case int32(Int32)
    case uint32(UInt32)
    case int64(Int64)
    case uint64(UInt64)
    case float(Float)
    case double(Double)
    case string(String?)
    case dateTime(UADateTime)
    case guid(UAGuid)
    case byteString([UInt8]?)
    case xmlElement(String?)
    case nodeId(NodeId)
    case expandedNodeId(ExpandedNodeId)
    case statusCode(StatusCode)
    case qualifiedName(QualifiedName)
    case localizedText(LocalizedText)
    case extensionObject(ExtensionObject)
    case dataValue(DataValue)
    /// An element of an array of Variant (type 24 only appears as an array).
    case variant(Variant)
    /// A DiagnosticInfo, skipped when decoded.
    case diagnosticInfo
    /// An array: its element type, the elements (each a scalar of that type), and for a
    /// multi-dimensional array its dimensions.
    case array(BuiltinType, [Variant], dimensions: [Int32]?)

    /// The built-in type, nil for `.null`.
    public var type: BuiltinType? {
        switch self {
        case .null: return nil
        case .boolean: return .boolean
        case .sbyte: return .sbyte
        case .byte: return .byte
        case .int16: return .int16
        case .uint16: return .uint16
        case .int32: return .int32
        case .uint32: return .uint32
        case .int64: return .int64
        case .uint64: return .uint64
        case .float: return .float
        case .double: return .double
        case .string: return .string
        case .dateTime: return .dateTime
        case .guid: return .guid
        case .byteString: return .byteString
        case .xmlElement: return .xmlElement
        case .nodeId: return .nodeId
        case .expandedNodeId: return .expandedNodeId
        case .statusCode: return .statusCode
        case .qualifiedName: return .qualifiedName
        case .localizedText: return .localizedText
        case .extensionObject: return .extensionObject
        case .dataValue: return .dataValue
        case .variant: return .variant
        case .diagnosticInfo: return .diagnosticInfo
        case .array(let t, _, _): return t
        }
    }

    /// The value as a Double, for numeric scalars (Boolean as 0/1); nil otherwise.
    public var doubleValue: Double? {
        switch self {
        case .boolean(let b): return b ? 1 : 0
        case .sbyte(let v): return Double(v)
        case .byte(let v): return Double(v)
        case .int16(let v): return Double(v)
        case .uint16(let v): return Double(v)
        case .int32(let v): return Double(v)
        case .uint32(let v): return Double(v)
        case .int64(let v): return Double(v)
        case .uint64(let v): return Double(v)
        case .float(let v): return Double(v)
        case .double(let v): return v
        case .variant(let v): return v.doubleValue
        default: return nil
        }
    }

    /// The value as text: numbers as Swift prints them, strings as they are, arrays in brackets.
    public var description: String {
        switch self {
        case .null: return "null"
        case .boolean(let b): return b ? "true" : "false"
        case .sbyte(let v): return String(v)
        case .byte(let v): return String(v)
        case .int16(let v): return String(v)
        case .uint16(let v): return String(v)
        case .int32(let v): return String(v)
        case .uint32(let v): return String(v)
        case .int64(let v): return String(v)
        case .uint64(let v): return String(v)
        case .float(let v): return String(v)
        case .double(let v): return String(v)
        case .string(let s): return s.map { "\"\($0)\"" } ?? "null"
        case .dateTime(let d): return d.description
        case .guid(let g): return g.description
        case .byteString(let b): return b.map { "<\($0.count) bytes>" } ?? "null"
        case .xmlElement(let s): return s ?? "null"
        case .nodeId(let n): return n.description
        case .expandedNodeId(let n): return n.description
        case .statusCode(let s): return s.description
        case .qualifiedName(let q): return q.description
        case .localizedText(let t): return "\"\(t.text ?? "")\""
        case .extensionObject(let e): return "ExtensionObject(\(e.typeId))"
        case .dataValue(let d): return d.value.description
        case .variant(let v): return v.description
        case .diagnosticInfo: return "DiagnosticInfo"
        case .array(_, let elements, _): return "[" + elements.map(\.description).joined(separator: ", ") + "]"
        }
    }
}

/// A value with its quality and timestamps, as Read and subscriptions deliver it. Fields the
/// server left out are nil (a missing StatusCode means Good).
public struct DataValue: Sendable, Hashable {
    public var value: Variant
    public var status: StatusCode
    public var sourceTimestamp: UADateTime?
    public var sourcePicoseconds: UInt16?
    public var serverTimestamp: UADateTime?
    public var serverPicoseconds: UInt16?
    /// Whether the server sent a value at all (mask bit 0x01).
    public var hasValue: Bool

    public init(value: Variant = .null, status: StatusCode = .good, sourceTimestamp: UADateTime? = nil,
                serverTimestamp: UADateTime? = nil, hasValue: Bool = true) {
        self.value = value
        self.status = status
        self.sourceTimestamp = sourceTimestamp
        self.serverTimestamp = serverTimestamp
        self.hasValue = hasValue
    }
}

extension UABinaryReader {
    /// A Variant: its encoding byte (type id, array flag 0x80, dimensions flag 0x40), then the
    /// value or the array.
    public mutating func readVariant(_ field: String = "Variant") throws(UADecodingError) -> Variant {
        try nested(field) { (r: inout UABinaryReader) throws(UADecodingError) -> Variant in
            let start = r.position
            let mask = try r.readUInt8(field)
            let typeId = mask & 0x3F
            if typeId == 0 {
                guard mask == 0 else { throw r.invalid("null Variant with array flags", at: start, field) }
                return .null
            }
            guard let type = BuiltinType(rawValue: typeId) else {
                throw r.invalid("unknown Variant type \(typeId)", at: start, field)
            }
            if mask & 0x80 == 0 {
                guard mask & 0x40 == 0 else { throw r.invalid("array dimensions on a scalar", at: start, field) }
                guard type != .variant else { throw r.invalid("a scalar Variant inside a Variant", at: start, field) }
                return try r.readScalar(type, field)
            }
            let elements = try r.readArray(field, minElementBytes: type.minEncodedBytes) { (e: inout UABinaryReader) throws(UADecodingError) -> Variant in
                try e.readScalar(type, field)
            }
            var dims: [Int32]?
            if mask & 0x40 != 0 {
                let dimsStart = r.position
                let d = try r.readArray(field + ".ArrayDimensions", minElementBytes: 4) { (e: inout UABinaryReader) throws(UADecodingError) -> Int32 in
                    try e.readInt32(field)
                }
                var product = 1
                for v in d {
                    guard v >= 0 else { throw r.invalid("negative array dimension", at: dimsStart, field) }
                    product = product.multipliedReportingOverflow(by: Int(v)).overflow ? Int.max : product * Int(v)
                }
                guard product == elements.count else {
                    throw r.invalid("array dimensions \(d) do not match \(elements.count) elements", at: dimsStart, field)
                }
                dims = d
            }
            return .array(type, elements, dimensions: dims)
        }
    }

    mutating func readScalar(_ type: BuiltinType, _ field: String) throws(UADecodingError) -> Variant {
        switch type {
        case .boolean: return .boolean(try readBool(field))
        case .sbyte: return .sbyte(Int8(bitPattern: try readUInt8(field)))
        case .byte: return .byte(try readUInt8(field))
        case .int16: return .int16(try readInteger(Int16.self, field))
        case .uint16: return .uint16(try readUInt16(field))
        case .int32: return .int32(try readInt32(field))
        case .uint32: return .uint32(try readUInt32(field))
        case .int64: return .int64(try readInt64(field))
        case .uint64: return .uint64(try readInteger(UInt64.self, field))
        case .float: return .float(try readFloat(field))
        case .double: return .double(try readDouble(field))
        case .string: return .string(try readString(field))
        case .dateTime: return .dateTime(try readDateTime(field))
        case .guid: return .guid(try readGuid(field))
        case .byteString: return .byteString(try readByteString(field))
        case .xmlElement: return .xmlElement(try readString(field))
        case .nodeId: return .nodeId(try readNodeId(field))
        case .expandedNodeId: return .expandedNodeId(try readExpandedNodeId(field))
        case .statusCode: return .statusCode(try readStatusCode(field))
        case .qualifiedName: return .qualifiedName(try readQualifiedName(field))
        case .localizedText: return .localizedText(try readLocalizedText(field))
        case .extensionObject:
            return try nested(field) { (r: inout UABinaryReader) throws(UADecodingError) -> Variant in .extensionObject(try r.readExtensionObject(field)) }
        case .dataValue: return .dataValue(try readDataValue(field))
        case .variant: return .variant(try readVariant(field))
        case .diagnosticInfo:
            try skipDiagnosticInfo(field)
            return .diagnosticInfo
        }
    }

    /// A DataValue: its mask, then the fields the mask names, in the order Part 6 gives.
    public mutating func readDataValue(_ field: String = "DataValue") throws(UADecodingError) -> DataValue {
        try nested(field) { (r: inout UABinaryReader) throws(UADecodingError) -> DataValue in
            let start = r.position
            let mask = try r.readUInt8(field)
            guard mask & 0xC0 == 0 else { throw r.invalid("unknown DataValue mask bits \(mask)", at: start, field) }
            var dv = DataValue(hasValue: mask & 0x01 != 0)
            if mask & 0x01 != 0 { dv.value = try r.readVariant(field + ".Value") }
            if mask & 0x02 != 0 { dv.status = try r.readStatusCode(field + ".StatusCode") }
            if mask & 0x04 != 0 { dv.sourceTimestamp = try r.readDateTime(field + ".SourceTimestamp") }
            if mask & 0x10 != 0 { dv.sourcePicoseconds = try r.readUInt16(field + ".SourcePicoseconds") }
            if mask & 0x08 != 0 { dv.serverTimestamp = try r.readDateTime(field + ".ServerTimestamp") }
            if mask & 0x20 != 0 { dv.serverPicoseconds = try r.readUInt16(field + ".ServerPicoseconds") }
            return dv
        }
    }
}

extension UABinaryWriter {
    public mutating func writeVariant(_ v: Variant) {
        guard let type = v.type else { writeUInt8(0); return }
        if case .array(_, let elements, let dims) = v {
            writeUInt8(type.rawValue | 0x80 | (dims != nil ? 0x40 : 0))
            writeArray(elements) { $0.writeScalar($1) }
            if let dims { writeArray(dims) { $0.writeInt32($1) } }
            return
        }
        writeUInt8(type.rawValue)
        writeScalar(v)
    }

    mutating func writeScalar(_ v: Variant) {
        switch v {
        case .null, .array: break
        case .boolean(let b): writeBool(b)
        case .sbyte(let x): writeUInt8(UInt8(bitPattern: x))
        case .byte(let x): writeUInt8(x)
        case .int16(let x): writeInteger(x)
        case .uint16(let x): writeUInt16(x)
        case .int32(let x): writeInt32(x)
        case .uint32(let x): writeUInt32(x)
        case .int64(let x): writeInt64(x)
        case .uint64(let x): writeInteger(x)
        case .float(let x): writeFloat(x)
        case .double(let x): writeDouble(x)
        case .string(let s): writeString(s)
        case .dateTime(let d): writeDateTime(d)
        case .guid(let g): writeGuid(g)
        case .byteString(let b): writeByteString(b)
        case .xmlElement(let s): writeString(s)
        case .nodeId(let n): writeNodeId(n)
        case .expandedNodeId(let n): writeExpandedNodeId(n)
        case .statusCode(let s): writeStatusCode(s)
        case .qualifiedName(let q): writeQualifiedName(q)
        case .localizedText(let t): writeLocalizedText(t)
        case .extensionObject(let e): writeExtensionObject(e)
        case .dataValue(let d): writeDataValue(d)
        case .variant(let inner): writeVariant(inner)
        case .diagnosticInfo: writeEmptyDiagnosticInfo()
        }
    }

    public mutating func writeDataValue(_ d: DataValue) {
        var mask: UInt8 = 0
        if d.hasValue { mask |= 0x01 }
        if d.status != .good { mask |= 0x02 }
        if d.sourceTimestamp != nil { mask |= 0x04 }
        if d.serverTimestamp != nil { mask |= 0x08 }
        if d.sourcePicoseconds != nil { mask |= 0x10 }
        if d.serverPicoseconds != nil { mask |= 0x20 }
        writeUInt8(mask)
        if d.hasValue { writeVariant(d.value) }
        if d.status != .good { writeStatusCode(d.status) }
        if let t = d.sourceTimestamp { writeDateTime(t) }
        if let p = d.sourcePicoseconds { writeUInt16(p) }
        if let t = d.serverTimestamp { writeDateTime(t) }
        if let p = d.serverPicoseconds { writeUInt16(p) }
    }
}
