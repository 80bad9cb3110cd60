import CMosquitto
import Platform

/// What went wrong talking to an MQTT broker: which broker, which libmosquitto call, the
/// libmosquitto error code by name, the broker's CONNACK or SUBACK reason where it gave one,
/// and errno where the failure was a system call.
public struct MQTTError: Error, Sendable, Hashable, CustomStringConvertible {
    /// What kind of failure, for callers that react differently (and for metrics labels).
    public enum Kind: String, Sendable, Hashable, CaseIterable {
        /// Options refused before any connection (bad client id, TLS files libmosquitto rejects).
        case setup
        /// The TCP (or TLS) connection could not be made: refused, unreachable, name lookup.
        case connect
        /// The TLS handshake failed (wrong CA, certificate not accepted by the broker).
        case tls
        /// The broker answered CONNACK with a refusal (bad credentials, not authorised, …).
        case refused
        /// A subscription was refused by the broker (SUBACK failure code).
        case subscription
        /// An established connection was lost (broker gone, keepalive timeout, protocol error).
        case connectionLost = "connection_lost"
        /// A publish could not be queued.
        case publish
    }

    public var kind: Kind
    /// `host:port` of the broker.
    public var broker: String
    /// The libmosquitto function that failed (`mosquitto_connect`, `mosquitto_loop`, …).
    public var function: String
    /// The libmosquitto result, by name (`MOSQ_ERR_CONN_REFUSED`); nil when the broker answered.
    public var code: Int32?
    /// The broker's CONNACK / SUBACK reason code, with its meaning.
    public var reason: Int32?
    public var errno: Errno?
    /// More words: the reason's meaning, the last error libmosquitto logged (an OpenSSL message).
    public var detail: String

    public init(kind: Kind, broker: String, function: String, code: Int32? = nil, reason: Int32? = nil,
                errno: Errno? = nil, detail: String = "") {
        self.kind = kind
        self.broker = broker
        self.function = function
        self.code = code
        self.reason = reason
        self.errno = errno
        self.detail = detail
    }

    /// `mqtt broker 127.0.0.1:1883: mosquitto_loop: MOSQ_ERR_CONN_REFUSED: CONNACK 134 (bad username or password)`.
    public var description: String {
        var parts = ["mqtt broker \(broker)", function]
        if let code { parts.append(Self.name(of: code)) }
        if let errno { parts.append(errno.description) }
        if let reason { parts.append("reason \(reason)") }
        if !detail.isEmpty { parts.append(detail) }
        return parts.joined(separator: ": ")
    }

    /// The name of a libmosquitto result code (`MOSQ_ERR_TLS`), never `mosquitto_strerror`'s
    /// text (it calls `strerror` for `MOSQ_ERR_ERRNO`, which is not thread-safe).
    public static func name(of code: Int32) -> String {
        switch code {
        case MOSQ_ERR_SUCCESS.rawValue: return "MOSQ_ERR_SUCCESS"
        case MOSQ_ERR_NOMEM.rawValue: return "MOSQ_ERR_NOMEM"
        case MOSQ_ERR_PROTOCOL.rawValue: return "MOSQ_ERR_PROTOCOL"
        case MOSQ_ERR_INVAL.rawValue: return "MOSQ_ERR_INVAL"
        case MOSQ_ERR_NO_CONN.rawValue: return "MOSQ_ERR_NO_CONN"
        case MOSQ_ERR_CONN_REFUSED.rawValue: return "MOSQ_ERR_CONN_REFUSED"
        case MOSQ_ERR_NOT_FOUND.rawValue: return "MOSQ_ERR_NOT_FOUND"
        case MOSQ_ERR_CONN_LOST.rawValue: return "MOSQ_ERR_CONN_LOST"
        case MOSQ_ERR_TLS.rawValue: return "MOSQ_ERR_TLS"
        case MOSQ_ERR_PAYLOAD_SIZE.rawValue: return "MOSQ_ERR_PAYLOAD_SIZE"
        case MOSQ_ERR_NOT_SUPPORTED.rawValue: return "MOSQ_ERR_NOT_SUPPORTED"
        case MOSQ_ERR_AUTH.rawValue: return "MOSQ_ERR_AUTH"
        case MOSQ_ERR_ACL_DENIED.rawValue: return "MOSQ_ERR_ACL_DENIED"
        case MOSQ_ERR_UNKNOWN.rawValue: return "MOSQ_ERR_UNKNOWN"
        case MOSQ_ERR_ERRNO.rawValue: return "MOSQ_ERR_ERRNO"
        case MOSQ_ERR_EAI.rawValue: return "MOSQ_ERR_EAI"
        case MOSQ_ERR_PROXY.rawValue: return "MOSQ_ERR_PROXY"
        case MOSQ_ERR_MALFORMED_UTF8.rawValue: return "MOSQ_ERR_MALFORMED_UTF8"
        case MOSQ_ERR_KEEPALIVE.rawValue: return "MOSQ_ERR_KEEPALIVE"
        case MOSQ_ERR_LOOKUP.rawValue: return "MOSQ_ERR_LOOKUP"
        case MOSQ_ERR_MALFORMED_PACKET.rawValue: return "MOSQ_ERR_MALFORMED_PACKET"
        case MOSQ_ERR_DUPLICATE_PROPERTY.rawValue: return "MOSQ_ERR_DUPLICATE_PROPERTY"
        case MOSQ_ERR_TLS_HANDSHAKE.rawValue: return "MOSQ_ERR_TLS_HANDSHAKE"
        case MOSQ_ERR_QOS_NOT_SUPPORTED.rawValue: return "MOSQ_ERR_QOS_NOT_SUPPORTED"
        case MOSQ_ERR_OVERSIZE_PACKET.rawValue: return "MOSQ_ERR_OVERSIZE_PACKET"
        case MOSQ_ERR_OCSP.rawValue: return "MOSQ_ERR_OCSP"
        case MOSQ_ERR_TIMEOUT.rawValue: return "MOSQ_ERR_TIMEOUT"
        case MOSQ_ERR_RETAIN_NOT_SUPPORTED.rawValue: return "MOSQ_ERR_RETAIN_NOT_SUPPORTED"
        case MOSQ_ERR_TOPIC_ALIAS_INVALID.rawValue: return "MOSQ_ERR_TOPIC_ALIAS_INVALID"
        case MOSQ_ERR_ADMINISTRATIVE_ACTION.rawValue: return "MOSQ_ERR_ADMINISTRATIVE_ACTION"
        case MOSQ_ERR_ALREADY_EXISTS.rawValue: return "MOSQ_ERR_ALREADY_EXISTS"
        default: return "mosquitto error \(code)"
        }
    }
}
