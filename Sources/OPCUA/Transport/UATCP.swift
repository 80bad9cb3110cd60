/// UA-TCP (OPC UA Part 6, 7.1): the 8-byte message header, Hello / Acknowledge / Error, and the
/// limits both sides agree on.

/// The limits this client offers in its Hello and enforces on everything it receives.
public struct UATCPLimits: Sendable, Hashable {
    /// Largest chunk we accept (our ReceiveBufferSize), bytes.
    public var receiveBufferSize: UInt32
    /// Largest chunk we send before the server's answer lowers it, bytes.
    public var sendBufferSize: UInt32
    /// Largest reassembled message we accept, bytes.
    public var maxMessageSize: UInt32
    /// Most chunks in one message we accept.
    public var maxChunkCount: UInt32

    public init(receiveBufferSize: UInt32 = 65_535, sendBufferSize: UInt32 = 65_535,
                maxMessageSize: UInt32 = 16 << 20, maxChunkCount: UInt32 = 512) {
        self.receiveBufferSize = receiveBufferSize
        self.sendBufferSize = sendBufferSize
        self.maxMessageSize = maxMessageSize
        self.maxChunkCount = maxChunkCount
    }
}

/// What the server's Acknowledge allows us to send.
struct UATCPSendLimits: Sendable, Hashable {
    /// Largest chunk the server accepts (its ReceiveBufferSize).
    var chunkSize: UInt32
    /// Largest message the server accepts; 0: no limit.
    var maxMessageSize: UInt32
    /// Most chunks per message the server accepts; 0: no limit.
    var maxChunkCount: UInt32
}

/// The three-letter message types of the header.
enum UATCPMessageType: String, Sendable {
    case hello = "HEL", acknowledge = "ACK", error = "ERR", reverseHello = "RHE"
    case message = "MSG", open = "OPN", close = "CLO"

    var bytes: [UInt8] { Array(rawValue.utf8) }
}

/// The header every UA-TCP message starts with: type, chunk type (`F` final, `C` more follow,
/// `A` abort), and the size of the whole chunk, header included.
struct UATCPHeader: Sendable, Hashable {
    static let size = 8
    var type: UATCPMessageType
    var chunk: UInt8
    var messageSize: UInt32

    /// Parses and checks a header: a known type, a known chunk type, and a size between the
    /// header's own and `maxSize`. Anything else is a protocol violation (the connection closes).
    static func parse(_ b: [UInt8], maxSize: UInt32) throws(OPCUAError.Kind) -> UATCPHeader {
        guard b.count >= size else { throw .protocolViolation("short header") }
        let text = String(decoding: b[0..<3], as: UTF8.self)
        guard let type = UATCPMessageType(rawValue: text), b[0..<3].allSatisfy({ $0 >= 0x41 && $0 <= 0x5A }) else {
            throw .protocolViolation("unknown message type \(b[0..<3].map { String($0, radix: 16) }.joined(separator: " "))")
        }
        let chunk = b[3]
        guard chunk == UInt8(ascii: "F") || chunk == UInt8(ascii: "C") || chunk == UInt8(ascii: "A") else {
            throw .protocolViolation("unknown chunk type 0x\(String(chunk, radix: 16)) in \(text)")
        }
        let sz = UInt32(b[4]) | UInt32(b[5]) << 8 | UInt32(b[6]) << 16 | UInt32(b[7]) << 24
        guard sz >= UInt32(size) else { throw .protocolViolation("\(text) size \(sz) below the header's 8 bytes") }
        guard sz <= maxSize else { throw .limitExceeded("\(text) chunk of \(sz) bytes over the receive buffer of \(maxSize)") }
        return UATCPHeader(type: type, chunk: chunk, messageSize: sz)
    }

    func write(into w: inout UABinaryWriter) {
        w.writeBytes(type.bytes)
        w.writeUInt8(chunk)
        w.writeUInt32(messageSize)
    }
}

/// Hello: what the client offers.
struct UAHello {
    var limits: UATCPLimits
    var endpointUrl: String

    func encoded() -> [UInt8] {
        var w = UABinaryWriter()
        UATCPHeader(type: .hello, chunk: UInt8(ascii: "F"), messageSize: 0).write(into: &w)
        w.writeUInt32(0)  // protocol version
        w.writeUInt32(limits.receiveBufferSize)
        w.writeUInt32(limits.sendBufferSize)
        w.writeUInt32(limits.maxMessageSize)
        w.writeUInt32(limits.maxChunkCount)
        w.writeString(endpointUrl)
        w.patchUInt32(UInt32(w.bytes.count), at: 4)
        return w.bytes
    }
}

/// Acknowledge: what the server accepts.
struct UAAcknowledge: Sendable, Hashable {
    var protocolVersion: UInt32
    var receiveBufferSize: UInt32
    var sendBufferSize: UInt32
    var maxMessageSize: UInt32
    var maxChunkCount: UInt32

    init(decoding r: inout UABinaryReader) throws(UADecodingError) {
        protocolVersion = try r.readUInt32("Acknowledge.ProtocolVersion")
        receiveBufferSize = try r.readUInt32("Acknowledge.ReceiveBufferSize")
        sendBufferSize = try r.readUInt32("Acknowledge.SendBufferSize")
        maxMessageSize = try r.readUInt32("Acknowledge.MaxMessageSize")
        maxChunkCount = try r.readUInt32("Acknowledge.MaxChunkCount")
    }

    /// Checks the answer against Part 6's rules and our offer, and says what we may send.
    func sendLimits(offered: UATCPLimits) throws(OPCUAError.Kind) -> UATCPSendLimits {
        guard receiveBufferSize >= 8192 else { throw .protocolViolation("Acknowledge ReceiveBufferSize \(receiveBufferSize) below 8192") }
        guard sendBufferSize >= 8192 else { throw .protocolViolation("Acknowledge SendBufferSize \(sendBufferSize) below 8192") }
        guard sendBufferSize <= offered.receiveBufferSize else {
            throw .protocolViolation("Acknowledge SendBufferSize \(sendBufferSize) over our ReceiveBufferSize \(offered.receiveBufferSize)")
        }
        return UATCPSendLimits(chunkSize: min(receiveBufferSize, offered.sendBufferSize),
                               maxMessageSize: maxMessageSize, maxChunkCount: maxChunkCount)
    }
}

/// The body of an ERR message or of an abort chunk: a StatusCode and a reason.
struct UATCPErrorBody {
    var status: StatusCode
    var reason: String?

    init(decoding r: inout UABinaryReader) throws(UADecodingError) {
        status = try r.readStatusCode("Error.Error")
        reason = try r.readString("Error.Reason")
    }
}

/// An endpoint URL: `opc.tcp://host[:port][/path]` (port 4840 when left out; IPv6 in brackets).
public struct UAEndpointURL: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int
    public var text: String

    public init(parsing text: String) throws(OPCUAError) {
        do {
            let parsed = try OPCUAEndpointText(parsing: text)
            host = parsed.host
            port = parsed.port
            self.text = text
        } catch {
            throw OPCUAError(.badEndpoint(error.reason), operation: "connect", endpoint: text)
        }
    }

    public var description: String { text }
}
