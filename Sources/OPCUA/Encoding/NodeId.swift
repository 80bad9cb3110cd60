#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
@_exported import OPCUATypes

// The binary encodings of NodeId and ExpandedNodeId (the values are in OPCUATypes).

extension UABinaryReader {
    /// A NodeId in any of its binary encodings (two-byte, four-byte, numeric, string, GUID, opaque).
    public mutating func readNodeId(_ field: String = "NodeId") throws(UADecodingError) -> NodeId {
        let start = position
        let encoding = try readUInt8(field)
        guard encoding & 0xC0 == 0 else { throw invalid("ExpandedNodeId flags in a NodeId", at: start, field) }
        return try readNodeIdBody(encoding: encoding, start: start, field)
    }

    mutating func readNodeIdBody(encoding: UInt8, start: Int, _ field: String) throws(UADecodingError) -> NodeId {
        switch encoding & 0x3F {
        case 0: return .numeric(UInt32(try readUInt8(field)))
        case 1:
            let ns = try readUInt8(field)
            return .numeric(UInt32(try readUInt16(field)), namespace: UInt16(ns))
        case 2:
            let ns = try readUInt16(field)
            return .numeric(try readUInt32(field), namespace: ns)
        case 3:
            let ns = try readUInt16(field)
            guard let s = try readString(field) else { return NodeId(namespace: ns, .string("")) }
            return NodeId(namespace: ns, .string(s))
        case 4:
            let ns = try readUInt16(field)
            return NodeId(namespace: ns, .guid(try readGuid(field)))
        case 5:
            let ns = try readUInt16(field)
            return NodeId(namespace: ns, .opaque(try readByteString(field) ?? []))
        default:
            throw invalid("unknown NodeId encoding \(encoding & 0x3F)", at: start, field)
        }
    }

    /// An ExpandedNodeId: a NodeId whose encoding byte may add a namespace URI (0x80) and a
    /// server index (0x40).
    public mutating func readExpandedNodeId(_ field: String = "ExpandedNodeId") throws(UADecodingError) -> ExpandedNodeId {
        let start = position
        let encoding = try readUInt8(field)
        let id = try readNodeIdBody(encoding: encoding, start: start, field)
        let uri = encoding & 0x80 != 0 ? try readString(field) : nil
        let server = encoding & 0x40 != 0 ? try readUInt32(field) : 0
        return ExpandedNodeId(id, namespaceUri: uri, serverIndex: server)
    }
}

extension UABinaryWriter {
    /// A NodeId in its most compact encoding.
    public mutating func writeNodeId(_ id: NodeId) { writeNodeId(id, flags: 0) }

    mutating func writeNodeId(_ id: NodeId, flags: UInt8) {
        switch id.identifier {
        case .numeric(let n) where id.namespace == 0 && n <= 0xFF:
            writeUInt8(0 | flags); writeUInt8(UInt8(n))
        case .numeric(let n) where id.namespace <= 0xFF && n <= 0xFFFF:
            writeUInt8(1 | flags); writeUInt8(UInt8(id.namespace)); writeUInt16(UInt16(n))
        case .numeric(let n):
            writeUInt8(2 | flags); writeUInt16(id.namespace); writeUInt32(n)
        case .string(let s):
            writeUInt8(3 | flags); writeUInt16(id.namespace); writeString(s)
        case .guid(let g):
            writeUInt8(4 | flags); writeUInt16(id.namespace); writeGuid(g)
        case .opaque(let b):
            writeUInt8(5 | flags); writeUInt16(id.namespace); writeByteString(b)
        }
    }

    public mutating func writeExpandedNodeId(_ id: ExpandedNodeId) {
        var flags: UInt8 = 0
        if id.namespaceUri != nil { flags |= 0x80 }
        if id.serverIndex != 0 { flags |= 0x40 }
        writeNodeId(id.nodeId, flags: flags)
        if let uri = id.namespaceUri { writeString(uri) }
        if id.serverIndex != 0 { writeUInt32(id.serverIndex) }
    }
}
