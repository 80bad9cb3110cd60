import CMosquitto
import Platform
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// How to reach and talk to one MQTT broker.
public struct MQTTOptions: Sendable, Hashable {
    public enum ProtocolVersion: String, Sendable, Hashable, CaseIterable {
        case v311 = "3.1.1"
        case v5 = "5"
    }

    /// TLS to the broker: the CA that signed the broker's certificate, and optionally a
    /// client certificate and key the broker asks for. The broker's name (or IP address) is
    /// checked against its certificate.
    public struct TLS: Sendable, Hashable {
        public var caFile: String
        public var certFile: String?
        public var keyFile: String?

        public init(caFile: String, certFile: String? = nil, keyFile: String? = nil) {
            self.caFile = caFile
            self.certFile = certFile
            self.keyFile = keyFile
        }
    }

    /// The last-will message the broker publishes when this client goes away without a clean
    /// disconnect (a Sparkplug death certificate).
    public struct Will: Sendable, Hashable {
        public var topic: String
        public var payload: [UInt8]
        public var qos: Int
        public var retain: Bool

        public init(topic: String, payload: [UInt8], qos: Int = 1, retain: Bool = false) {
            self.topic = topic
            self.payload = payload
            self.qos = qos
            self.retain = retain
        }
    }

    public var host: String
    public var port: Int
    public var clientId: String
    public var protocolVersion: ProtocolVersion
    /// Seconds between keep-alive pings; a broker that does not answer within 1.5× is gone.
    public var keepaliveS: Int
    /// Clean session (MQTT 3.1.1) / clean start (MQTT 5): false keeps the subscription and
    /// the QoS 1 messages queued while disconnected, at the broker.
    public var cleanSession: Bool
    public var username: String?
    public var password: String?
    public var tls: TLS?
    /// Topic filters subscribed on every connect, at `qos`.
    public var subscriptions: [String]
    public var qos: Int
    /// The first wait before a reconnect; doubled after each failure up to `reconnectMaxMs`,
    /// back to the first after a connection was accepted.
    public var reconnectMinMs: Int
    public var reconnectMaxMs: Int
    public var will: Will?

    public init(host: String, port: Int, clientId: String, protocolVersion: ProtocolVersion = .v5, keepaliveS: Int = 10,
                cleanSession: Bool = true, username: String? = nil, password: String? = nil, tls: TLS? = nil,
                subscriptions: [String] = [], qos: Int = 1, reconnectMinMs: Int = 200, reconnectMaxMs: Int = 5000,
                will: Will? = nil) {
        self.host = host
        self.port = port
        self.clientId = clientId
        self.protocolVersion = protocolVersion
        self.keepaliveS = keepaliveS
        self.cleanSession = cleanSession
        self.username = username
        self.password = password
        self.tls = tls
        self.subscriptions = subscriptions
        self.qos = qos
        self.reconnectMinMs = reconnectMinMs
        self.reconnectMaxMs = reconnectMaxMs
        self.will = will
    }

    /// `host:port` (IPv6 hosts in brackets), as errors and logs name the broker.
    public var broker: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    /// The hostname as libmosquitto wants it (no brackets).
    var bareHost: String { host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host }
}

/// What happened to the connection; delivered on the client's network thread, in order.
public enum MQTTEvent: Sendable, Hashable {
    /// The broker accepted the connection (CONNACK 0). `sessionPresent`: it kept this client's
    /// session (subscriptions, queued messages) from before.
    case connected(sessionPresent: Bool)
    /// The broker granted a subscription (`qos` it granted).
    case subscribed(topic: String, qos: Int)
    /// The broker refused a subscription (SUBACK failure): nothing will arrive on that filter.
    case subscriptionRefused(topic: String, MQTTError)
    /// A connection attempt failed (unreachable, TLS, CONNACK refusal); a retry follows after
    /// the backoff.
    case connectFailed(MQTTError)
    /// An accepted connection was lost; a reconnect follows after the backoff.
    case connectionLost(MQTTError)
}

/// One message as it arrived. `payload` is valid only during the callback.
public struct MQTTMessage {
    public var topic: String
    public var payload: UnsafeRawBufferPointer
    public var qos: Int
    /// The broker delivered it from its retained store (a state published before we subscribed).
    public var retained: Bool
}

/// An MQTT client over libmosquitto, with its own network thread (an `OSThread` running
/// `mosquitto_loop`; never Swift's cooperative pool): connects, subscribes on every connect,
/// reconnects after a capped, doubling backoff, and hands events and messages to the
/// callbacks on that thread. Callbacks must not block: they run between network reads.
///
/// `publish` may be called from any thread (libmosquitto is told it is threaded).
public final class MQTTClient: Sendable {
    public let options: MQTTOptions
    private let handle: Handle
    private let context: CallbackContext
    private let thread = Mutex<OSThread?>(nil)
    private let stopping = Atomic<Bool>(false)
    private let connectedFlag = Atomic<Bool>(false)
    private let parker = Parker()

    /// The libmosquitto context, owned here: destroyed in `deinit`, after the thread that
    /// used it has been joined. `@unchecked Sendable`: libmosquitto serialises its own use
    /// (threaded mode) between the network thread and `publish`.
    private final class Handle: @unchecked Sendable {
        let mosq: OpaquePointer
        init(_ mosq: OpaquePointer) { self.mosq = mosq }
        deinit { mosquitto_destroy(mosq) }
    }

    private static let libraryReady: Bool = { mosquitto_lib_init() == MOSQ_ERR_SUCCESS.rawValue }()

    /// Makes the client and sets its options (nothing is connected until `start`).
    /// The corresponding C functions are `mosquitto_new`, `mosquitto_int_option`,
    /// `mosquitto_username_pw_set`, `mosquitto_tls_set` and `mosquitto_will_set`.
    public init(options: MQTTOptions, onEvent: @escaping @Sendable (MQTTEvent) -> Void,
                onMessage: @escaping @Sendable (MQTTMessage) -> Void) throws(MQTTError) {
        self.options = options
        let broker = options.broker
        func fail(_ function: String, _ rc: Int32, _ detail: String) -> MQTTError {
            MQTTError(kind: .setup, broker: broker, function: function, code: rc,
                      errno: rc == MOSQ_ERR_ERRNO.rawValue ? Errno.current : nil, detail: detail)
        }
        guard Self.libraryReady else { throw MQTTError(kind: .setup, broker: broker, function: "mosquitto_lib_init") }
        let context = CallbackContext(broker: broker, protocolVersion: options.protocolVersion,
                                      subscriptions: options.subscriptions, qos: options.qos,
                                      onEvent: onEvent, onMessage: onMessage)
        guard let mosq = mosquitto_new(options.clientId, options.cleanSession, Unmanaged.passUnretained(context).toOpaque()) else {
            let e = Errno.current
            throw MQTTError(kind: .setup, broker: broker, function: "mosquitto_new", errno: e,
                            detail: "client id \"\(options.clientId)\" (an empty id needs clean_session)")
        }
        self.handle = Handle(mosq)
        self.context = context
        var rc = mosquitto_threaded_set(mosq, true)
        guard rc == MOSQ_ERR_SUCCESS.rawValue else { throw fail("mosquitto_threaded_set", rc, "") }
        let version = options.protocolVersion == .v5 ? CMosquitto_PROTOCOL_V5() : CMosquitto_PROTOCOL_V311()
        rc = mosquitto_int_option(mosq, MOSQ_OPT_PROTOCOL_VERSION, version)
        guard rc == MOSQ_ERR_SUCCESS.rawValue else { throw fail("mosquitto_int_option", rc, "protocol \(options.protocolVersion.rawValue)") }
        _ = mosquitto_int_option(mosq, MOSQ_OPT_TCP_NODELAY, 1)
        if let user = options.username {
            rc = mosquitto_username_pw_set(mosq, user, options.password)
            guard rc == MOSQ_ERR_SUCCESS.rawValue else { throw fail("mosquitto_username_pw_set", rc, "username \"\(user)\"") }
        }
        if let tls = options.tls {
            rc = mosquitto_tls_set(mosq, tls.caFile, nil, tls.certFile, tls.keyFile, nil)
            guard rc == MOSQ_ERR_SUCCESS.rawValue else {
                throw fail("mosquitto_tls_set", rc, "ca \(tls.caFile)" + (tls.certFile.map { ", cert \($0)" } ?? "")
                            + (tls.keyFile.map { ", key \($0)" } ?? "") + ": a file is missing or unreadable")
            }
        }
        if let will = options.will {
            rc = will.payload.withUnsafeBytes {
                mosquitto_will_set(mosq, will.topic, Int32($0.count), $0.baseAddress, Int32(will.qos), will.retain)
            }
            guard rc == MOSQ_ERR_SUCCESS.rawValue else { throw fail("mosquitto_will_set", rc, "topic \(will.topic)") }
        }
        mosquitto_connect_v5_callback_set(mosq) { _, obj, rc, flags, _ in CallbackContext.from(obj).connected(rc: rc, flags: flags) }
        mosquitto_subscribe_v5_callback_set(mosq) { _, obj, mid, count, granted, _ in
            CallbackContext.from(obj).subscribed(mid: mid, granted: UnsafeBufferPointer(start: granted, count: Int(count)))
        }
        mosquitto_message_v5_callback_set(mosq) { _, obj, message, _ in
            guard let m = message?.pointee else { return }
            CallbackContext.from(obj).message(m)
        }
        mosquitto_log_callback_set(mosq) { _, obj, level, text in
            guard level == CMosquitto_LOG_ERR(), let text else { return }
            CallbackContext.from(obj).lastLoggedError = String(cString: text)
        }
        context.mosq = mosq
    }

    /// Whether the broker has accepted the connection now.
    public var isConnected: Bool { connectedFlag.load(ordering: .acquiring) }

    /// Starts the network thread: it connects (retrying after the backoff until `stop`).
    /// `threadStart` runs first on that thread (the appliance sets the thread's priority there).
    public func start(threadStart: (@Sendable () -> Void)? = nil) throws(ThreadStartError) {
        try thread.withLock { (t: inout OSThread?) throws(ThreadStartError) in
            guard t == nil, !stopping.load(ordering: .acquiring) else { return }
            t = try OSThread(name: "mqtt-\(options.port)") { [self] in
                threadStart?()
                run()
            }
        }
    }

    /// Publishes (best effort while disconnected: the message is dropped by libmosquitto).
    /// The corresponding C function is `mosquitto_publish`.
    public func publish(topic: String, payload: [UInt8], qos: Int = 1, retain: Bool = false) throws(MQTTError) {
        let rc = payload.withUnsafeBytes {
            mosquitto_publish(handle.mosq, nil, topic, Int32($0.count), $0.baseAddress, Int32(qos), retain)
        }
        guard rc == MOSQ_ERR_SUCCESS.rawValue else {
            throw MQTTError(kind: .publish, broker: options.broker, function: "mosquitto_publish", code: rc,
                            errno: rc == MOSQ_ERR_ERRNO.rawValue ? Errno.current : nil, detail: "topic \(topic)")
        }
    }

    /// Replaces the last-will message for the next CONNECT (a Sparkplug edge node's NDEATH
    /// carries the bdSeq of its next session). Call it before `start` or from `onEvent` on the
    /// network thread (`connectFailed` / `connectionLost` come before the next attempt): the
    /// will is sent with CONNECT, so changing it while connected takes effect only at the next one.
    /// The corresponding C function is `mosquitto_will_set`.
    public func setWill(_ will: MQTTOptions.Will) throws(MQTTError) {
        let rc = will.payload.withUnsafeBytes {
            mosquitto_will_set(handle.mosq, will.topic, Int32($0.count), $0.baseAddress, Int32(will.qos), will.retain)
        }
        guard rc == MOSQ_ERR_SUCCESS.rawValue else {
            throw MQTTError(kind: .setup, broker: options.broker, function: "mosquitto_will_set", code: rc, detail: "topic \(will.topic)")
        }
    }

    /// Disconnects cleanly (messages already queued are sent first, for up to half a second)
    /// and joins the network thread. Idempotent.
    public func stop() {
        stopping.store(true, ordering: .releasing)
        parker.wake()
        let t = thread.withLock { t -> OSThread? in
            defer { t = nil }
            return t
        }
        t?.join()
    }

    deinit { stop() }

    // MARK: The network thread

    private func run() {
        let mosq = handle.mosq
        var delayMs = max(1, options.reconnectMinMs)
        var first = true
        while !stopping.load(ordering: .acquiring) {
            context.beginAttempt()
            let rc = first
                ? mosquitto_connect(mosq, options.bareHost, Int32(options.port), Int32(options.keepaliveS))
                : mosquitto_reconnect(mosq)
            let err = Errno.current
            let function = first ? "mosquitto_connect" : "mosquitto_reconnect"
            first = false
            if rc != MOSQ_ERR_SUCCESS.rawValue {
                context.onEvent(.connectFailed(context.error(rc: rc, errno: err, function: function)))
            } else {
                var loopRC = MOSQ_ERR_SUCCESS.rawValue
                while loopRC == MOSQ_ERR_SUCCESS.rawValue, !stopping.load(ordering: .acquiring) {
                    loopRC = mosquitto_loop(mosq, 100, 1)
                    connectedFlag.store(context.accepted, ordering: .releasing)
                }
                let loopErr = Errno.current
                if stopping.load(ordering: .acquiring) {
                    if loopRC == MOSQ_ERR_SUCCESS.rawValue { disconnectCleanly(mosq) }
                    break
                }
                connectedFlag.store(false, ordering: .releasing)
                let e = context.error(rc: loopRC, errno: loopErr, function: "mosquitto_loop")
                if context.accepted {
                    delayMs = max(1, options.reconnectMinMs)
                    context.onEvent(.connectionLost(e))
                } else {
                    context.onEvent(.connectFailed(e))
                }
            }
            parker.wait(untilMonotonicNs: monotonicNowNs() + Int64(delayMs) * 1_000_000)
            delayMs = min(max(1, options.reconnectMaxMs), delayMs * 2)
        }
        connectedFlag.store(false, ordering: .releasing)
    }

    private func disconnectCleanly(_ mosq: OpaquePointer) {
        let deadline = monotonicNowNs() + 500_000_000
        while mosquitto_want_write(mosq), monotonicNowNs() < deadline {
            if mosquitto_loop(mosq, 20, 1) != MOSQ_ERR_SUCCESS.rawValue { break }
        }
        _ = mosquitto_disconnect(mosq)
        while monotonicNowNs() < deadline {
            if mosquitto_loop(mosq, 20, 1) != MOSQ_ERR_SUCCESS.rawValue { break }
        }
        connectedFlag.store(false, ordering: .releasing)
    }
}

/// The callbacks' side of a client: handed to libmosquitto as its `obj` pointer (unretained:
/// the client holds it and outlives the network thread). Its mutable state is touched only on
/// the network thread (the callbacks run inside `mosquitto_connect` / `mosquitto_loop`).
private final class CallbackContext: @unchecked Sendable {
    let broker: String
    let protocolVersion: MQTTOptions.ProtocolVersion
    let subscriptions: [String]
    let qos: Int
    let onEvent: @Sendable (MQTTEvent) -> Void
    let onMessage: @Sendable (MQTTMessage) -> Void
    var mosq: OpaquePointer?
    /// This attempt's CONNACK: accepted, or the refusal's reason code.
    var accepted = false
    var refusal: Int32?
    var lastLoggedError: String?
    /// Subscriptions waiting for their SUBACK, by message id.
    var pending: [Int32: String] = [:]

    init(broker: String, protocolVersion: MQTTOptions.ProtocolVersion, subscriptions: [String], qos: Int,
         onEvent: @escaping @Sendable (MQTTEvent) -> Void, onMessage: @escaping @Sendable (MQTTMessage) -> Void) {
        self.broker = broker
        self.protocolVersion = protocolVersion
        self.subscriptions = subscriptions
        self.qos = qos
        self.onEvent = onEvent
        self.onMessage = onMessage
    }

    static func from(_ obj: UnsafeMutableRawPointer?) -> CallbackContext {
        Unmanaged<CallbackContext>.fromOpaque(obj!).takeUnretainedValue()
    }

    func beginAttempt() {
        accepted = false
        refusal = nil
        lastLoggedError = nil
        pending = [:]
    }

    func connected(rc: Int32, flags: Int32) {
        guard rc == 0 else {
            refusal = rc
            return
        }
        accepted = true
        onEvent(.connected(sessionPresent: flags & CMosquitto_SESSION_PRESENT() != 0))
        guard let mosq else { return }
        for topic in subscriptions {
            var mid: Int32 = 0
            let src = mosquitto_subscribe(mosq, &mid, topic, Int32(qos))
            if src == MOSQ_ERR_SUCCESS.rawValue {
                pending[mid] = topic
            } else {
                onEvent(.subscriptionRefused(topic: topic, MQTTError(kind: .subscription, broker: broker, function: "mosquitto_subscribe",
                                                                     code: src, detail: "topic filter \(topic)")))
            }
        }
    }

    func subscribed(mid: Int32, granted: UnsafeBufferPointer<Int32>) {
        guard let topic = pending.removeValue(forKey: mid) else { return }
        let q = granted.first ?? 128
        if q >= 0, q <= 2 {
            onEvent(.subscribed(topic: topic, qos: Int(q)))
        } else {
            onEvent(.subscriptionRefused(topic: topic, MQTTError(kind: .subscription, broker: broker, function: "SUBACK", reason: q,
                                                                 detail: "topic filter \(topic): \(String(cString: mosquitto_reason_string(q)))")))
        }
    }

    func message(_ m: mosquitto_message) {
        let topic = m.topic.map { String(cString: $0) } ?? ""
        let payload = UnsafeRawBufferPointer(start: m.payload, count: Int(max(0, m.payloadlen)))
        onMessage(MQTTMessage(topic: topic, payload: payload, qos: Int(m.qos), retained: m.retain))
    }

    /// The error for a failed call, with what the broker or libmosquitto said.
    func error(rc: Int32, errno: Errno, function: String) -> MQTTError {
        var detail: [String] = []
        var kind: MQTTError.Kind = accepted ? .connectionLost : .connect
        var reason: Int32?
        if let r = refusal {
            kind = .refused
            reason = r
            let text = protocolVersion == .v5 ? String(cString: mosquitto_reason_string(r)) : String(cString: mosquitto_connack_string(r))
            detail.append("CONNACK refused: \(text)")
        } else if rc == MOSQ_ERR_TLS.rawValue || rc == MOSQ_ERR_TLS_HANDSHAKE.rawValue {
            kind = .tls
        }
        if let logged = lastLoggedError { detail.append(logged) }
        switch rc {
        case MOSQ_ERR_CONN_LOST.rawValue where accepted: detail.append("the broker closed the connection")
        case MOSQ_ERR_NO_CONN.rawValue: detail.append("not connected")
        case MOSQ_ERR_KEEPALIVE.rawValue: detail.append("no answer within the keepalive")
        case MOSQ_ERR_EAI.rawValue: detail.append("the broker's name could not be resolved")
        default: break
        }
        return MQTTError(kind: kind, broker: broker, function: function, code: rc,
                         reason: reason, errno: rc == MOSQ_ERR_ERRNO.rawValue ? errno : nil,
                         detail: detail.joined(separator: "; "))
    }
}
