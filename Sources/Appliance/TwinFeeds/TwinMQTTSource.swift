import Logging
import MQTT
import Platform
import SparkplugB
import Synchronization
import TibetTwin

#if canImport(Glibc)
import Glibc
#endif

/// A change in whether a feed can deliver twin lines at all (docs/mqtt.md): the broker is
/// gone or back. The appliance puts each on the audit chain (`twin_feed_lost`,
/// `twin_feed_restored`); the permits need nothing from it — a silent twin goes stale and
/// blocks on its own.
package struct TwinFeedEvent: Sendable, Hashable {
    package enum Kind: String, Sendable, Hashable {
        case lost, restored
    }

    /// Why the feed went silent (the `cause` in the audit token and the log).
    package enum Cause: String, Sendable, Hashable {
        /// No TCP connection to the broker (refused, unreachable, name lookup).
        case brokerUnreachable = "broker_unreachable"
        /// The broker refused the connection (CONNACK: credentials, not authorised, …).
        case refused
        /// The TLS handshake failed (wrong CA, certificate refused).
        case tls
        /// An established connection was lost (broker stopped, keepalive timeout).
        case connectionLost = "connection_lost"
        /// The broker refused a subscription: nothing arrives on that topic filter.
        case subscriptionRefused = "subscription_refused"
        /// A persistent session was expected and the broker had none: messages published while
        /// disconnected are lost (the feed resubscribed).
        case sessionExpired = "session_expired"
        /// Back: connected and every subscription granted.
        case subscribed
        /// OPC UA: no connection to the server (refused, unreachable, name not found).
        case serverUnreachable = "server_unreachable"
        /// OPC UA: no answer to a Publish within the keep-alive period (and the request deadline).
        case keepAliveMissing = "keepalive_missing"
        /// OPC UA: the server ended the session or the subscription (BadSessionIdInvalid, a
        /// subscription that timed out …).
        case sessionLost = "session_lost"
        /// OPC UA: the server sent something malformed or out of order; the channel was closed.
        case protocolError = "protocol_error"
        /// OPC UA: a device's heartbeat node stopped changing for longer than `max_stall_ms`.
        case heartbeatStalled = "heartbeat_stalled"
        /// OPC UA: that heartbeat changes again.
        case heartbeatMoving = "heartbeat_moving"
    }

    package var source: String
    package var kind: Kind
    package var cause: Cause
    package var detail: String
    package var time: ClockReading

    package init(source: String, kind: Kind, cause: Cause, detail: String, time: ClockReading) {
        self.source = source
        self.kind = kind
        self.cause = cause
        self.detail = detail
        self.time = time
    }
}

/// A twin feed from an MQTT broker (docs/mqtt.md): subscribes to the configured topic
/// filters; each message's payload is one twin line, judged by the same pipeline as every
/// other source (parser, validation, `seq` replay, signatures) and handed to the same guard
/// inbox. A retained message is judged like any other: by its `ts` and `seq`.
///
/// libmosquitto runs on the client's own network thread; this source's callbacks run there and
/// touch only the pipeline (whose sink is the guard's inbox) and this source's counters.
/// Messages over `maxMessageBytes` are counted (`too_long`) and dropped. When the broker cannot
/// be reached, refuses us, or drops a subscription, nothing arrives: the twin goes stale and the
/// guard blocks, as with a cut socket; `events` reports the loss once per outage.
package final class TwinMQTTSource: Sendable {
    package struct Settings: Sendable, Hashable {
        package var options: MQTTOptions
        package var maxMessageBytes: Int
        package var topicNamesDevice: Bool
        package var logIntervalSeconds: Double
        package var sparkplug: SparkplugSettings?

        /// With `sparkplug`, the group's topic is subscribed and the STATE will is set here.
        package init(options: MQTTOptions, maxMessageBytes: Int = 65_536, topicNamesDevice: Bool = false,
                     logIntervalSeconds: Double = 60, sparkplug: SparkplugSettings? = nil) {
            var options = options
            if let sparkplug {
                let filter = "\(SparkplugTopic.namespace)/\(sparkplug.group)/#"
                if !options.subscriptions.contains(filter) { options.subscriptions.append(filter) }
                options.will = MQTTOptions.Will(topic: SparkplugTopic.state(hostId: sparkplug.hostId),
                                                payload: SparkplugEncode.state(online: false, timestampMs: 0), qos: 1, retain: true)
            }
            self.options = options
            self.maxMessageBytes = maxMessageBytes
            self.topicNamesDevice = topicNamesDevice
            self.logIntervalSeconds = logIntervalSeconds
            self.sparkplug = sparkplug
        }
    }

    /// The appliance as a Sparkplug B host application (docs/mqtt.md#sparkplug-b).
    package struct SparkplugSettings: Sendable, Hashable {
        package var group: String
        package var hostId: String
        /// Device (map name) → which Sparkplug device and metrics are its twin.
        package var bindings: [String: SparkplugBinding]
        /// Minimum seconds between two rebirth requests to one edge node.
        package var rebirthIntervalSeconds: Double

        package init(group: String, hostId: String, bindings: [String: SparkplugBinding], rebirthIntervalSeconds: Double = 2) {
            self.group = group
            self.hostId = hostId
            self.bindings = bindings.filter { $0.value.group == group }
            self.rebirthIntervalSeconds = rebirthIntervalSeconds
        }
    }

    package let settings: Settings
    let core: TwinSourceCore
    private let events: (@Sendable (TwinFeedEvent) -> Void)?
    private let client = Mutex<MQTTClient?>(nil)
    private let link = Mutex(Link())
    private let messages = Atomic<UInt64>(0)
    /// The Sparkplug host's view of the edge nodes (network thread only; a Mutex to be Sendable).
    private let host = Mutex(SparkplugHost())
    /// The maps' Sparkplug bindings in force (replaced on a reload).
    private let bindings: Mutex<[String: SparkplugBinding]>
    private let rebirths: Mutex<RateLimit>

    /// Connection bookkeeping, touched on the network thread (and read for status).
    private struct Link {
        /// Whether the feed is up: connected and every subscription granted.
        var up = false
        /// Whether the current outage has been reported (one `lost` per outage).
        var lostReported = false
        var everConnected = false
        var granted: Set<String> = []
    }

    package init(settings: Settings, pipeline: TwinFeedPipeline, logger: Logger = Logger(label: "tibet-twin.twin.mqtt"),
                 clock: any TimeSource = SystemTimeSource(), events: (@Sendable (TwinFeedEvent) -> Void)? = nil) {
        self.settings = settings
        self.events = events
        self.rebirths = Mutex(RateLimit(intervalSeconds: settings.sparkplug?.rebirthIntervalSeconds ?? 2))
        self.bindings = Mutex(settings.sparkplug?.bindings ?? [:])
        self.core = TwinSourceCore(name: "mqtt:\(settings.options.broker)", pipeline: pipeline, logger: logger, clock: clock,
                                   logIntervalSeconds: settings.logIntervalSeconds)
    }

    /// `mqtt:<host>:<port>`.
    package var name: String { core.name }

    package var counters: TwinFeedCounters { core.snapshot }

    /// Whether the broker connection is up and every subscription granted.
    package var isSubscribed: Bool { link.withLock { $0.up } }

    /// Starts the network thread and returns at once: a broker that is not there yet is
    /// retried (the twin is silent meanwhile, so the guard blocks).
    package func start() async throws(TwinSourceError) {
        let made: MQTTClient
        do {
            made = try MQTTClient(options: settings.options,
                                  onEvent: { [weak self] e in self?.connection(e) },
                                  onMessage: { [weak self] m in self?.message(m) })
        } catch {
            throw TwinSourceError(kind: .mqtt, source: name, function: error.function, detail: error.description)
        }
        let fresh = client.withLock { c -> Bool in
            guard c == nil else { return false }
            c = made
            return true
        }
        guard fresh else {
            throw TwinSourceError(kind: .alreadyStarted, source: name, function: "start", detail: "already started")
        }
        do {
            // A twin fault arrives on this thread: it is on the drop path, like the socket feeds'.
            let (what, logger) = ("mqtt feed \(name)", core.logger)
            try made.start(threadStart: { SafetyPriority.raiseCurrentThread(what, logger: logger) })
        } catch {
            throw TwinSourceError(kind: .mqtt, source: name, function: "pthread_create", errno: error.errno.rawValue,
                                  detail: "cannot start the MQTT network thread")
        }
        if !link.withLock({ $0.up }) {
            // Until the first subscription is granted the twin is silent; say so once.
            core.logger.notice("mqtt feed starting; the twin is silent (and the guard blocks) until the broker accepts the subscriptions",
                               metadata: ["source": "\(name)", "topics": "\(settings.options.subscriptions.joined(separator: ","))"])
        }
    }

    /// Takes the Sparkplug bindings of reloaded maps: from the next message on, devices are bound
    /// as the new maps say. A device whose binding went away or changed has its twin state
    /// withdrawn (it blocks until its new twin reports).
    package func replaceBindings(maps: [DeviceMap]) {
        guard let sp = settings.sparkplug else { return }
        let fresh = Dictionary(maps.compactMap { m in m.sparkplug.flatMap { $0.group == sp.group ? (m.device, $0) : nil } },
                               uniquingKeysWith: { a, _ in a })
        let changed = bindings.withLock { old -> [String] in
            defer { old = fresh }
            return old.filter { fresh[$0.key] != $0.value }.map(\.key)
        }
        for device in changed { core.pipeline.withdraw(device: device) }
    }

    /// Disconnects and joins the network thread.
    package func stop() async {
        let c = client.withLock { c -> MQTTClient? in
            defer { c = nil }
            return c
        }
        c?.stop()
    }

    // MARK: On the network thread

    private func message(_ m: MQTTMessage) {
        let received = core.clock.now()
        let number = messages.add(1, ordering: .relaxed).newValue
        let count = m.payload.count
        core.update {
            $0.bytes += UInt64(count)
            if m.retained { $0.retainedMessages += 1 }
        }
        func place() -> String { "topic \(m.topic)" + (m.retained ? " (retained)" : "") }
        guard count <= settings.maxMessageBytes else {
            core.countDrop(TwinDrop(reason: .tooLong, detail: "message of \(count) bytes; max_message_bytes is \(settings.maxMessageBytes)"),
                           received: received, lineNumber: number, where: place())
            return
        }
        if let sparkplug = settings.sparkplug, m.topic.hasPrefix(SparkplugTopic.namespace + "/") {
            sparkplugMessage(m, sparkplug, received: received, number: number)
            return
        }
        var end = count
        if end > 0, m.payload[end - 1] == 0x0A { end -= 1 }
        if end > 0, m.payload[end - 1] == 0x0D { end -= 1 }
        let required: Substring? = settings.topicNamesDevice
            ? m.topic.split(separator: "/", omittingEmptySubsequences: false).last : nil
        let bytes = UnsafeBufferPointer(start: m.payload.baseAddress?.assumingMemoryBound(to: UInt8.self), count: end)
        _ = core.handle(bytes, received: received, lineNumber: number, requiredDevice: required, where: place())
    }

    private func connection(_ event: MQTTEvent) {
        let now = core.clock.now()
        switch event {
        case .connected(let sessionPresent):
            let expired = link.withLock { l -> Bool in
                defer {
                    l.everConnected = true
                    l.granted = []
                }
                return l.everConnected && !settings.options.cleanSession && !sessionPresent
            }
            core.update { $0.brokerConnects += 1 }
            core.logger.info("mqtt broker accepted the connection", metadata: [
                "source": "\(name)", "session_present": "\(sessionPresent)"])
            if let sp = settings.sparkplug {
                // Sparkplug 3.0: the host's birth, retained, so edge nodes know a host is there.
                try? client.withLock { $0 }?.publish(topic: SparkplugTopic.state(hostId: sp.hostId),
                                                     payload: SparkplugEncode.state(online: true, timestampMs: UInt64(max(0, now.wallNs / 1_000_000))),
                                                     qos: 1, retain: true)
            }
            if expired {
                report(.lost, .sessionExpired, "the broker kept no session for client id \(settings.options.clientId): messages published while disconnected are lost", now)
            }
            if settings.options.subscriptions.isEmpty { markUp(now) }
        case .subscribed(let topic, let qos):
            let all = link.withLock { l -> Bool in
                l.granted.insert(topic)
                return l.granted.isSuperset(of: settings.options.subscriptions)
            }
            core.logger.debug("mqtt subscription granted", metadata: ["source": "\(name)", "topic": "\(topic)", "qos": "\(qos)"])
            if all { markUp(now) }
        case .subscriptionRefused(let topic, let error):
            _ = link.withLock { $0.granted.remove(topic) }
            goDown(.subscriptionRefused, error, now)
        case .connectFailed(let error):
            let cause: TwinFeedEvent.Cause
            switch error.kind {
            case .refused: cause = .refused
            case .tls: cause = .tls
            default: cause = .brokerUnreachable
            }
            goDown(cause, error, now)
        case .connectionLost(let error):
            goDown(.connectionLost, error, now)
        }
    }

    private func markUp(_ now: ClockReading) {
        let wasReported = link.withLock { l -> Bool in
            let r = l.lostReported
            l.up = true
            l.lostReported = false
            return r
        }
        core.update { $0.clientsConnected = 1 }
        core.logger.notice("mqtt feed subscribed; twin lines are read", metadata: ["source": "\(name)"])
        if wasReported { report(.restored, .subscribed, "connected and subscribed to \(settings.options.subscriptions.joined(separator: ", "))", now) }
    }

    private func goDown(_ cause: TwinFeedEvent.Cause, _ error: MQTTError, _ now: ClockReading) {
        if settings.sparkplug != nil {
            // Without the broker the host's view of every edge node is gone: block at once.
            apply(host.withLock { $0.reset() }, received: now)
        }
        let first = link.withLock { l -> Bool in
            l.up = false
            defer { l.lostReported = true }
            return !l.lostReported
        }
        core.update {
            $0.clientsConnected = 0
            if first { $0.brokerLosses += 1 }
        }
        core.logRateLimited(key: "mqtt_\(cause.rawValue)", received: now) { suppressed in
            core.logger.error("mqtt feed cannot deliver twin lines; the twin goes stale and the guard blocks until it is back", metadata: [
                "source": "\(name)", "cause": "\(cause.rawValue)", "error": "\(error)", "suppressed": "\(suppressed)"])
        }
        if first { report(.lost, cause, error.description, now) }
    }

    private func report(_ kind: TwinFeedEvent.Kind, _ cause: TwinFeedEvent.Cause, _ detail: String, _ now: ClockReading) {
        events?(TwinFeedEvent(source: name, kind: kind, cause: cause, detail: detail, time: now))
    }
}

extension TwinMQTTSource.Settings {
    /// The settings of a configured `mqtt` feed; reads its password file (a missing one, or one
    /// other local users may read, stops the start naming the config line). The TLS files are
    /// checked for presence here; libmosquitto reads them when it connects.
    package init(_ m: ApplianceConfig.MQTTFeed, maps: [DeviceMap] = []) throws(TwinFeedConfigError) {
        let options = try Self.options(m)
        let sparkplug = m.sparkplug.map { sp in
            TwinMQTTSource.SparkplugSettings(group: sp.group, hostId: sp.hostId,
                              bindings: Dictionary(maps.compactMap { map in map.sparkplug.map { (map.device, $0) } },
                                                   uniquingKeysWith: { a, _ in a }))
        }
        self.init(options: options, maxMessageBytes: m.maxMessageBytes, topicNamesDevice: m.topicNamesDevice, sparkplug: sparkplug)
    }

    /// The libmosquitto options of a configured connection (an `mqtt` feed's, or `publish`'s):
    /// reads the password file; checks that the TLS files can be read.
    package static func options(_ m: ApplianceConfig.MQTTFeed) throws(TwinFeedConfigError) -> MQTTOptions {
        var password: String?
        if let file = m.passwordFile { password = try Self.readPassword(file) }
        var tls: MQTTOptions.TLS?
        if let t = m.tls {
            for f in [t.ca, t.cert, t.key].compactMap({ $0 }) where access(f.path, R_OK) != 0 {
                throw TwinFeedConfigError(file: f, message: "cannot read \(f.path): \(Errno.current.name)")
            }
            tls = MQTTOptions.TLS(caFile: t.ca.path, certFile: t.cert?.path, keyFile: t.key?.path)
        }
        return MQTTOptions(
            host: m.broker.host, port: m.broker.port, clientId: m.clientId ?? "tibet-twin",
            protocolVersion: m.protocolVersion == .v5 ? .v5 : .v311, keepaliveS: m.keepaliveS,
            cleanSession: m.cleanSession, username: m.username, password: password, tls: tls,
            subscriptions: m.topics, qos: m.qos, reconnectMinMs: m.reconnectMinMs, reconnectMaxMs: m.reconnectMaxMs)
    }

    /// The password: the file's first line. Refused if every local user may read it.
    static func readPassword(_ file: ApplianceConfig.ConfiguredPath) throws(TwinFeedConfigError) -> String {
        var st = stat()
        guard stat(file.path, &st) == 0 else {
            throw TwinFeedConfigError(file: file, message: "cannot read \(file.path): \(Errno.current.name)")
        }
        guard st.st_mode & 0o007 == 0 else {
            throw TwinFeedConfigError(file: file, message: "\(file.path) has " + String(format4: st.st_mode & 0o777)
                                      + ": every local user could read the broker password; chmod 0640 (or 0600)")
        }
        let bytes: [UInt8]
        do { bytes = try SystemCall.readFile(file.path, limit: 4096) } catch {
            throw TwinFeedConfigError(file: file, message: "cannot read \(file.path): \(error)")
        }
        let line = bytes.split(separator: 0x0A, maxSplits: 1, omittingEmptySubsequences: false).first ?? []
        var text = String(decoding: line, as: UTF8.self)
        if text.hasSuffix("\r") { text.removeLast() }
        guard !text.isEmpty else { throw TwinFeedConfigError(file: file, message: "\(file.path) is empty (the password is its first line)") }
        return text
    }
}

// MARK: Sparkplug B

extension TwinMQTTSource {
    /// One Sparkplug B message: decoded, fed to the host's view; what that view says reaches
    /// the guard as twin states of the bound devices, or as withdrawals (they block at once).
    private func sparkplugMessage(_ m: MQTTMessage, _ sp: SparkplugSettings, received: ClockReading, number: UInt64) {
        func place() -> String { "topic \(m.topic)" + (m.retained ? " (retained)" : "") }
        guard let topic = SparkplugTopic(m.topic), topic.group == sp.group else {
            // STATE of hosts, other groups: not ours to judge.
            core.update { $0.blankLines += 1 }
            return
        }
        if topic.type == .ncmd || topic.type == .dcmd {
            core.update { $0.blankLines += 1 }
            return
        }
        let payload: SparkplugPayload
        do {
            payload = try SparkplugPayload(decoding: m.payload)
        } catch {
            core.countDrop(TwinDrop(reason: .notSparkplug, detail: error.detail), received: received, lineNumber: number, where: place())
            return
        }
        let events = host.withLock { $0.handle(topic, payload) }
        let broken = events.contains { if case .rebirthNeeded = $0 { true } else { false } }
        apply(events, received: received)
        if broken {
            if case .rebirthNeeded(_, let why)? = events.last {
                core.countDrop(TwinDrop(reason: .sparkplugSequence, detail: why), received: received, lineNumber: number, where: place())
            }
        } else {
            core.update {
                $0.lines += 1
                $0.accepted += 1
            }
        }
    }

    /// Hands the host's events to the guard: states for bound devices, withdrawals, rebirth requests.
    private func apply(_ events: [SparkplugHostEvent], received: ClockReading) {
        guard settings.sparkplug != nil else { return }
        for event in events {
            switch event {
            case .device(let key, let device, let metrics):
                for (name, b) in bindings.withLock({ $0 }) where b.node == key.node && b.device == device {
                    // Counted per device as a JSON line is (`tibet_twin_device_twin_lines_*`).
                    switch core.pipeline.submit(Self.state(device: name, binding: b, metrics: metrics, received: received)) {
                    case .accepted:
                        core.update { $0.devices[name, default: DeviceTwinCounters()].accepted += 1 }
                    case .identityFailure(_, let drop), .dropped(let drop):
                        core.update { $0.devices[name, default: DeviceTwinCounters()].dropped[drop.reason, default: 0] += 1 }
                    }
                }
            case .deviceLost(let key, let device, let why):
                for (name, b) in bindings.withLock({ $0 }) where b.node == key.node && b.device == device {
                    core.pipeline.withdraw(device: name)
                    core.logRateLimited(key: "sparkplug_lost_\(name)", received: received) { suppressed in
                        core.logger.warning("sparkplug device has no twin state any more; it blocks until born again", metadata: [
                            "source": "\(name)", "device": "\(name)", "sparkplug": "\(key)/\(device)", "why": "\(why)",
                            "suppressed": "\(suppressed)"])
                    }
                }
            case .rebirthNeeded(let key, let why):
                guard rebirths.withLock({ $0.admit(key.description, nowNs: received.monotonicNs) }) != nil else { continue }
                core.logger.warning("sparkplug edge node view unreliable; requesting a rebirth", metadata: [
                    "source": "\(name)", "node": "\(key)", "why": "\(why)"])
                let topic = SparkplugTopic(group: key.group, type: .ncmd, node: key.node).description
                try? client.withLock { $0 }?.publish(topic: topic, payload: SparkplugEncode.rebirthRequest(
                    nowMs: UInt64(max(0, received.wallNs / 1_000_000))), qos: 0, retain: false)
            }
        }
    }

    /// The twin state of a bound device from its metrics: the status metric through the
    /// binding's codes, each bound value (missing when absent, null or not a number), `ts` the
    /// latest timestamp of those metrics.
    static func state(device: String, binding b: SparkplugBinding, metrics: [String: SparkplugTimedValue],
                      received: ClockReading) -> TwinState {
        var latestMs: UInt64?
        func note(_ t: SparkplugTimedValue?) {
            if let ms = t?.timestampMs { latestMs = max(latestMs ?? 0, ms) }
        }
        let s = metrics[b.status]
        note(s)
        var text: String?
        if case .text(let t)? = s?.value { text = t }
        let status = b.statusName(text: text, number: s?.value.number) ?? ""
        var values: [String: Double] = [:]
        for (register, metric) in b.values {
            let v = metrics[metric]
            note(v)
            if let n = v?.value.number { values[register] = n }
        }
        let tsNs = latestMs.map { Int64(clamping: $0) &* 1_000_000 } ?? received.wallNs
        return TwinState(device: device, tsNs: tsNs, status: status, values: values, received: received)
    }
}
