// The text and value forms of OPC UA NodeIds and GUIDs, and the syntax of an opc.tcp endpoint
// URL: pure values with no I/O, so the core can check a map's `twin: {opcua: …}` binding and a
// config's `opcua` feed without depending on the OPC UA client. `OPCUA` re-exports this module
// and adds the binary encodings.
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

/// A GUID as OPC UA encodes it: Data1–Data3 little-endian, Data4 as 8 raw bytes.
public struct UAGuid: Sendable, Hashable, CustomStringConvertible {
    public var data1: UInt32
    public var data2: UInt16
    public var data3: UInt16
    public var data4: [UInt8]

    public init(data1: UInt32, data2: UInt16, data3: UInt16, data4: [UInt8]) {
        self.data1 = data1
        self.data2 = data2
        self.data3 = data3
        self.data4 = data4.count == 8 ? data4 : Array((data4 + [UInt8](repeating: 0, count: 8)).prefix(8))
    }

    public static let zero = UAGuid(data1: 0, data2: 0, data3: 0, data4: [UInt8](repeating: 0, count: 8))

    /// `09087e75-8e5e-499b-954f-f2a9603db28a` (braces allowed); nil when malformed.
    public init?(parsing text: String) {
        var t = Substring(text)
        if t.hasPrefix("{") && t.hasSuffix("}") { t = t.dropFirst().dropLast() }
        let parts = t.split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count == 5, [8, 4, 4, 4, 12] == parts.map(\.count),
              parts.allSatisfy({ $0.allSatisfy(\.isHexDigit) }),
              let d1 = UInt32(parts[0], radix: 16), let d2 = UInt16(parts[1], radix: 16), let d3 = UInt16(parts[2], radix: 16)
        else { return nil }
        let tail = Array(parts[3] + parts[4])
        var d4: [UInt8] = []
        for i in stride(from: 0, to: 16, by: 2) {
            guard let b = UInt8(String(tail[i..<i + 2]), radix: 16) else { return nil }
            d4.append(b)
        }
        self.init(data1: d1, data2: d2, data3: d3, data4: d4)
    }

    public var description: String {
        func hex<T: BinaryInteger>(_ v: T, _ width: Int) -> String {
            let s = String(v, radix: 16)
            return String(repeating: "0", count: max(0, width - s.count)) + s
        }
        let d4 = data4.map { hex($0, 2) }
        return "\(hex(data1, 8))-\(hex(data2, 4))-\(hex(data3, 4))-\(d4[0..<2].joined())-\(d4[2...].joined())"
    }
}

/// Base64 for opaque NodeIds in text form, from Foundation.
package enum Base64 {
    package static func encode(_ bytes: [UInt8]) -> String { Data(bytes).base64EncodedString() }

    package static func decode(_ text: String) -> [UInt8]? { Data(base64Encoded: text).map { Array($0) } }
}

/// The syntax of an endpoint URL, `opc.tcp://HOST[:PORT][/PATH]` (IPv6 in brackets; port 4840
/// when not given).
public struct OPCUAEndpointText: Sendable, Hashable {
    public var host: String
    public var port: Int

    /// Why a text is not an endpoint URL.
    public struct SyntaxError: Error, Sendable, Hashable, CustomStringConvertible {
        public var text: String
        public var reason: String
        public var description: String { "not an opc.tcp endpoint: \(text): \(reason)" }
    }

    public init(parsing text: String) throws(SyntaxError) {
        func fail(_ why: String) -> SyntaxError { SyntaxError(text: text, reason: why) }
        guard text.hasPrefix("opc.tcp://") else { throw fail("expected opc.tcp://HOST[:PORT][/PATH]") }
        let rest = text.dropFirst("opc.tcp://".count)
        let authority = rest.prefix { $0 != "/" }
        var host: Substring
        var portText: Substring?
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else { throw fail("unclosed [ in IPv6 address") }
            host = authority[authority.index(after: authority.startIndex)..<close]
            let after = authority[authority.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { throw fail("expected :PORT after ]") }
                portText = after.dropFirst()
            }
        } else if let colon = authority.lastIndex(of: ":") {
            host = authority[..<colon]
            portText = authority[authority.index(after: colon)...]
        } else {
            host = authority
        }
        guard !host.isEmpty else { throw fail("no host") }
        var port = 4840
        if let portText {
            guard let p = Int(portText), (1...65535).contains(p) else { throw fail("port must be 1…65535") }
            port = p
        }
        self.host = String(host)
        self.port = port
    }
}
