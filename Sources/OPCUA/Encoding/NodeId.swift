#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// An OPC UA NodeId: a namespace index and a numeric, string, GUID or opaque identifier.
public struct NodeId: Sendable, Hashable, CustomStringConvertible {
    public enum Identifier: Sendable, Hashable {
        case numeric(UInt32)
        case string(String)
        case guid(UAGuid)
        case opaque([UInt8])
    }

    public var namespace: UInt16
    public var identifier: Identifier

    public init(namespace: UInt16 = 0, _ identifier: Identifier) {
        self.namespace = namespace
        self.identifier = identifier
    }

    public static func numeric(_ id: UInt32, namespace: UInt16 = 0) -> NodeId { NodeId(namespace: namespace, .numeric(id)) }
    public static func string(_ s: String, namespace: UInt16) -> NodeId { NodeId(namespace: namespace, .string(s)) }

    /// `i=0`, the null NodeId.
    public static let null = NodeId.numeric(0)

    public var isNull: Bool {
        guard namespace == 0 else { return false }
        switch identifier {
        case .numeric(let n): return n == 0
        case .string(let s): return s.isEmpty
        case .guid(let g): return g == UAGuid.zero
        case .opaque(let b): return b.isEmpty
        }
    }

    /// The standard text form: `i=85`, `ns=2;s=Crane01.PosX`, `ns=1;g=…`, `ns=3;b=<base64>`.
    public var description: String {
        let ns = namespace == 0 ? "" : "ns=\(namespace);"
        switch identifier {
        case .numeric(let n): return ns + "i=\(n)"
        case .string(let s): return ns + "s=" + s
        case .guid(let g): return ns + "g=" + g.description
        case .opaque(let b): return ns + "b=" + Base64.encode(b)
        }
    }
}

/// A NodeId that may name its namespace by URI instead of index, and a server index.
public struct ExpandedNodeId: Sendable, Hashable, CustomStringConvertible {
    public var nodeId: NodeId
    public var namespaceUri: String?
    public var serverIndex: UInt32

    public init(_ nodeId: NodeId, namespaceUri: String? = nil, serverIndex: UInt32 = 0) {
        self.nodeId = nodeId
        self.namespaceUri = namespaceUri
        self.serverIndex = serverIndex
    }

    public var description: String {
        var s = serverIndex == 0 ? "" : "svr=\(serverIndex);"
        if let namespaceUri {
            var local = nodeId
            local.namespace = 0
            s += "nsu=\(namespaceUri);" + local.description
        } else {
            s += nodeId.description
        }
        return s
    }
}

/// A NodeId as written in a map or on the command line: with a namespace index, or with a
/// namespace URI the client resolves against the server's namespace array.
public struct NodeIdText: Sendable, Hashable, CustomStringConvertible {
    public var nodeId: NodeId
    /// `nsu=` form: the namespace by URI (then `nodeId.namespace` is 0 until resolved).
    public var namespaceUri: String?

    /// Why a text is not a NodeId.
    public struct ParseError: Error, Sendable, Hashable, CustomStringConvertible {
        public var text: String
        public var reason: String
        public var description: String { "not a NodeId: \(text): \(reason)" }
    }

    public init(nodeId: NodeId, namespaceUri: String? = nil) {
        self.nodeId = nodeId
        self.namespaceUri = namespaceUri
    }

    /// Parses `i=85`, `ns=2;s=Crane01.PosX`, `ns=1;g=09087e75-8e5e-499b-954f-f2a9603db28a`,
    /// `ns=1;b=M/RbKBsRVkePCePcx24oRA==`, `nsu=http://example.com/UA/;s=Crane01.PosX`.
    public init(parsing text: String) throws(ParseError) {
        func fail(_ reason: String) -> ParseError { ParseError(text: text, reason: reason) }
        var rest = Substring(text)
        var namespace: UInt16 = 0
        var uri: String?
        if rest.hasPrefix("ns=") {
            guard let semi = rest.firstIndex(of: ";") else { throw fail("expected ns=INDEX;…") }
            guard let n = UInt16(rest[rest.index(rest.startIndex, offsetBy: 3)..<semi]) else { throw fail("namespace index must be 0…65535") }
            namespace = n
            rest = rest[rest.index(after: semi)...]
        } else if rest.hasPrefix("nsu=") {
            // The URI runs to the last ";" followed by an identifier type.
            guard let range = Self.lastIdentifierStart(in: rest) else { throw fail("expected nsu=URI;i=|s=|g=|b=…") }
            let u = rest[rest.index(rest.startIndex, offsetBy: 4)..<range]
            guard !u.isEmpty else { throw fail("empty namespace URI") }
            uri = String(u)
            rest = rest[rest.index(after: range)...]
        }
        guard rest.count >= 2, rest[rest.index(after: rest.startIndex)] == "=" else {
            throw fail("expected i=, s=, g= or b=")
        }
        let value = rest.dropFirst(2)
        let identifier: NodeId.Identifier
        switch rest.first {
        case "i":
            guard let n = UInt32(value) else { throw fail("numeric identifier must be 0…4294967295") }
            identifier = .numeric(n)
        case "s":
            guard !value.isEmpty else { throw fail("empty string identifier") }
            guard value.utf8.count <= 4096 else { throw fail("string identifier longer than 4096 bytes") }
            identifier = .string(String(value))
        case "g":
            guard let g = UAGuid(parsing: String(value)) else { throw fail("GUID must be xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx") }
            identifier = .guid(g)
        case "b":
            guard let b = Base64.decode(String(value)), !b.isEmpty else { throw fail("opaque identifier must be base64") }
            guard b.count <= 4096 else { throw fail("opaque identifier longer than 4096 bytes") }
            identifier = .opaque(b)
        default:
            throw fail("expected i=, s=, g= or b=")
        }
        self.init(nodeId: NodeId(namespace: namespace, identifier), namespaceUri: uri)
    }

    private static func lastIdentifierStart(in s: Substring) -> Substring.Index? {
        var found: Substring.Index?
        var i = s.startIndex
        while i < s.endIndex {
            if s[i] == ";" {
                let next = s[s.index(after: i)...]
                if next.count >= 2, "isgb".contains(next.first!), next[next.index(after: next.startIndex)] == "=" { found = i }
            }
            i = s.index(after: i)
        }
        return found
    }

    public var description: String {
        guard let namespaceUri else { return nodeId.description }
        return ExpandedNodeId(nodeId, namespaceUri: namespaceUri).description
    }
}

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

/// Base64 for opaque NodeIds in text form, from Foundation (the core's own copy is guard-side).
enum Base64 {
    static func encode(_ bytes: [UInt8]) -> String { Data(bytes).base64EncodedString() }

    static func decode(_ text: String) -> [UInt8]? { Data(base64Encoded: text).map { Array($0) } }
}
