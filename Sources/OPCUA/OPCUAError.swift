import Platform

/// A failed OPC UA exchange, with what a log line needs: what kind of failure, the StatusCode
/// where the server gave one, the service or step, and the endpoint.
public struct OPCUAError: Error, Sendable, Hashable, CustomStringConvertible {
    public enum Kind: Sendable, Hashable {
        /// The endpoint URL is not `opc.tcp://host[:port][/path]`, or the host does not resolve.
        case badEndpoint(String)
        /// Connecting failed (refused, unreachable, timed out).
        case connect(Errno)
        /// Sending or receiving failed.
        case socket(Errno)
        /// The server closed the connection.
        case closedByPeer
        /// No (complete) answer before the deadline.
        case timeout
        /// The server sent an ERR message (and closed the connection).
        case serverError(StatusCode, reason: String?)
        /// The server aborted the message (an `A` chunk).
        case aborted(StatusCode, reason: String?)
        /// The service answered with a ServiceFault or a Bad ServiceResult.
        case serviceFault(StatusCode)
        /// The server broke the protocol (unknown message type, wrong channel id, sequence
        /// number out of order, an answer to a request never made …).
        case protocolViolation(String)
        /// A message over a negotiated limit (chunk size, message size, chunk count).
        case limitExceeded(String)
        /// A message body could not be decoded.
        case decoding(UADecodingError)
        /// The client refused to go on (e.g. a password that would travel unencrypted).
        case refused(String)
        /// A security check failed: a server certificate not trusted, expired or naming another
        /// application; a signature, padding or encrypted block that does not verify; our own
        /// certificate or key unusable. The text says which check and what to do.
        case securityCheckFailed(String)
        /// The channel is closed (after an earlier failure or `close()`).
        case channelClosed
    }

    public var kind: Kind
    /// The service or step, e.g. `Read`, `OpenSecureChannel`, `Hello`.
    public var operation: String
    public var endpoint: String?

    public init(_ kind: Kind, operation: String, endpoint: String? = nil) {
        self.kind = kind
        self.operation = operation
        self.endpoint = endpoint
    }

    /// The StatusCode the server reported, if any (a fault, an ERR or abort message).
    public var statusCode: StatusCode? {
        switch kind {
        case .serverError(let s, _), .aborted(let s, _), .serviceFault(let s): return s
        case .timeout: return .badTimeout
        default: return nil
        }
    }

    public var description: String {
        var s = "OPC UA \(operation)"
        if let endpoint { s += " \(endpoint)" }
        s += ": "
        switch kind {
        case .badEndpoint(let why): s += "bad endpoint: \(why)"
        case .connect(let e): s += "connect failed: \(e.meaningFirst)"
        case .socket(let e): s += "connection failed: \(e.meaningFirst)"
        case .closedByPeer: s += "the server closed the connection"
        case .timeout: s += "timed out"
        case .serverError(let c, let r): s += "server error \(c)" + (r.map { ": \($0)" } ?? "")
        case .aborted(let c, let r): s += "message aborted by the server: \(c)" + (r.map { ": \($0)" } ?? "")
        case .serviceFault(let c): s += "service fault \(c)"
        case .protocolViolation(let why): s += "protocol violation: \(why)"
        case .limitExceeded(let why): s += "limit exceeded: \(why)"
        case .decoding(let e): s += e.description
        case .refused(let why): s += why
        case .securityCheckFailed(let why): s += "security check failed: \(why)"
        case .channelClosed: s += "the secure channel is closed"
        }
        return s
    }
}

/// A failure kind thrown by the parts below the channel, which add the operation and endpoint.
extension OPCUAError.Kind: Error {}
