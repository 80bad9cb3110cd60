import Logging
import OPCUA
import Platform
import Synchronization
import TibetTwin

/// A twin feed from an OPC UA server (docs/opcua.md): one subscription to every node the maps
/// bind (`twin: {opcua: …}`), kept alive by `OPCUASubscriber` on its own thread (reconnect with a
/// capped backoff, subscribe again). Each notification becomes the twin state of the devices
/// bound to its node (`OPCUATwinView`) and goes through the same pipeline and guard inbox as
/// every other feed.
///
/// When the connection, the session or the subscription is lost (no answer within the
/// keep-alive, the server stopped), every bound device's twin is withdrawn at once (it blocks)
/// and the outage is reported once; a heartbeat that stalls withdraws that device. Nothing here
/// decides a permit.
package final class TwinOPCUASource: Sendable {
    package struct Settings: Sendable, Hashable {
        package var endpoint: String
        package var options: OPCUAClientOptions
        package var publishingMs: Double
        package var reconnectMinMs: Int
        package var reconnectMaxMs: Int
        /// The feed's security as configured (the client's is in `options.security`).
        package var security: ApplianceConfig.OPCUAFeed.Security
        /// Device (map name) → its nodes.
        package var bindings: [String: OPCUABinding]
        package var logIntervalSeconds: Double = 60

        package init(endpoint: String, options: OPCUAClientOptions = OPCUAClientOptions(), publishingMs: Double = 50,
                     reconnectMinMs: Int = 200, reconnectMaxMs: Int = 5000,
                     security: ApplianceConfig.OPCUAFeed.Security = .none, bindings: [String: OPCUABinding]) {
            self.endpoint = endpoint
            self.options = options
            self.publishingMs = publishingMs
            self.reconnectMinMs = reconnectMinMs
            self.reconnectMaxMs = reconnectMaxMs
            self.security = security
            self.bindings = bindings
        }
    }

    package let settings: Settings
    let core: TwinSourceCore
    private let events: (@Sendable (TwinFeedEvent) -> Void)?
    private let view: Mutex<OPCUATwinView>
    private let subscriber = Mutex<OPCUASubscriber?>(nil)
    private let link = Mutex(Link())
    /// Devices whose binding a reload changed or removed: no states for them until a restart.
    private let retired = Mutex<Set<String>>([])
    private let notified = Atomic<UInt64>(0)

    private struct Link {
        var up = false
        var lostReported = false
    }

    package init(settings: Settings, pipeline: TwinFeedPipeline, logger: Logger = Logger(label: "tibet-twin.twin.opcua"),
                 clock: any TimeSource = SystemTimeSource(), events: (@Sendable (TwinFeedEvent) -> Void)? = nil) {
        self.settings = settings
        self.events = events
        self.view = Mutex(OPCUATwinView(bindings: settings.bindings))
        self.core = TwinSourceCore(name: "opcua:\(settings.endpoint)", pipeline: pipeline, logger: logger, clock: clock,
                                   logIntervalSeconds: settings.logIntervalSeconds)
    }

    /// `opcua:<endpoint>`.
    package var name: String { core.name }

    package var counters: TwinFeedCounters { core.snapshot }

    /// Node values the server has sent (each notification of each monitored item).
    package var notifications: UInt64 { notified.load(ordering: .relaxed) }

    /// Whether the subscription is up.
    package var isSubscribed: Bool { link.withLock { $0.up } }

    /// The view of the bound nodes (for status and tests).
    package var snapshot: OPCUATwinView { view.withLock { $0 } }

    /// Starts the subscriber's thread and returns at once: a server that is not there yet is
    /// retried (the twin is silent meanwhile, so the guard blocks).
    package func start() async throws(TwinSourceError) {
        let v = view.withLock { $0 }
        guard !v.nodes.isEmpty else {
            core.logger.warning("opcua feed has no map bound to it (twin: {opcua: …}); it does not connect", metadata: ["source": "\(name)"])
            return
        }
        var texts: [NodeIdText] = []
        for n in v.nodes {
            // The map loader checked every NodeId; a failure here is a bug, not bad input.
            guard let t = try? NodeIdText(parsing: n) else {
                throw TwinSourceError(kind: .opcua, source: name, function: "start", detail: "not a NodeId: \(n)")
            }
            texts.append(t)
        }
        var c = OPCUASubscriber.Configuration(endpoint: settings.endpoint, nodes: texts, samplingIntervalMs: v.samplingMs.min() ?? 100,
                                              publishingIntervalMs: settings.publishingMs, options: settings.options)
        c.samplingIntervalsMs = v.samplingMs
        c.backoffFirstMs = settings.reconnectMinMs
        c.backoffCapMs = settings.reconnectMaxMs
        c.threadName = "twin-opcua"
        let made = OPCUASubscriber(c) { [weak self] event in self?.handle(event) }
        let fresh = subscriber.withLock { s -> Bool in
            guard s == nil else { return false }
            s = made
            return true
        }
        guard fresh else { throw TwinSourceError(kind: .alreadyStarted, source: name, function: "start", detail: "already started") }
        // A twin fault arrives on this thread: it is on the drop path, like the socket feeds'.
        let (what, logger) = ("opcua feed \(name)", core.logger)
        do { try made.start(threadStart: { SafetyPriority.raiseCurrentThread(what, logger: logger) }) } catch {
            throw TwinSourceError(kind: .opcua, source: name, function: "pthread_create", errno: error.errno.rawValue,
                                  detail: "cannot start the OPC UA subscriber thread")
        }
        core.logger.notice("opcua feed starting; the twin is silent (and the guard blocks) until the server accepts the subscription",
                           metadata: ["source": "\(name)", "nodes": "\(v.nodes.count)", "devices": "\(v.devices.count)"])
    }

    /// Takes reloaded maps: a device whose `twin.opcua` binding changed or went away has its twin
    /// withdrawn and gets no more states from this feed (it blocks) until the appliance is
    /// restarted, which subscribes to the new nodes. Unchanged bindings carry on.
    package func replaceBindings(maps: [DeviceMap]) {
        let fresh = Dictionary(maps.compactMap { m in m.opcua.map { (m.device, $0) } }, uniquingKeysWith: { a, _ in a })
        let changed = settings.bindings.filter { fresh[$0.key] != $0.value }.map(\.key)
        let added = fresh.keys.filter { settings.bindings[$0] == nil }
        guard !changed.isEmpty || !added.isEmpty else { return }
        retired.withLock { $0.formUnion(changed) }
        for d in changed { core.pipeline.withdraw(device: d) }
        core.logger.warning("opcua bindings changed by a reload take effect at the next restart; until then those devices block", metadata: [
            "source": "\(name)", "changed": "\(changed.sorted().joined(separator: ","))", "added": "\(added.sorted().joined(separator: ","))"])
    }

    /// Ends the subscription and joins the thread.
    package func stop() async {
        let s = subscriber.withLock { s -> OPCUASubscriber? in
            defer { s = nil }
            return s
        }
        s?.stop()
    }

    // MARK: On the subscriber's thread

    private func handle(_ event: OPCUASubscriber.Event) {
        let now = core.clock.now()
        switch event {
        case .subscribed(let statuses):
            view.withLock { $0.subscribed(statuses, nowNs: now.monotonicNs) }
            let refused = zip(view.withLock { $0.nodes }, statuses).filter { !$0.1.isGood }
            for (node, status) in refused {
                core.logRateLimited(key: "opcua_item_\(node)", received: now) { suppressed in
                    core.logger.error("opcua server refused to monitor a bound node; the devices bound to it miss that value", metadata: [
                        "source": "\(name)", "node": "\(node)", "status": "\(OPCUATwinView.name(status))", "suppressed": "\(suppressed)"])
                }
            }
            let wasReported = link.withLock { l -> Bool in
                defer {
                    l.up = true
                    l.lostReported = false
                }
                return l.lostReported
            }
            core.update {
                $0.clientsConnected = 1
                $0.brokerConnects += 1
            }
            core.logger.notice("opcua feed subscribed; twin states are read", metadata: ["source": "\(name)"])
            if wasReported {
                report(.restored, .subscribed, "connected and subscribed to \(statuses.count) nodes"
                       + (refused.isEmpty ? "" : "; not monitored: " + refused.map { "\($0.0) (\(OPCUATwinView.name($0.1)))" }.joined(separator: ", ")), now)
            }
        case .values(let values):
            notified.add(UInt64(values.count), ordering: .relaxed)
            let (touched, beats, states) = view.withLock { v -> ([Int], (stalled: [(device: String, detail: String)], resumed: [String]), [TwinState]) in
                let touched = v.update(values, nowNs: now.monotonicNs)
                let beats = v.checkHeartbeats(nowNs: now.monotonicNs)
                let states = touched.filter { !v.stalled.contains(v.devices[$0].name) }.map { v.state(device: $0, received: now) }
                return (touched, beats, states)
            }
            _ = touched
            heartbeats(beats, now)
            for s in states { submit(s, now) }
        case .keepAlive:
            heartbeats(view.withLock { $0.checkHeartbeats(nowNs: now.monotonicNs) }, now)
        case .lost(let error, let retry):
            let devices = view.withLock { v -> [String] in
                v.lost()
                return v.devices.map(\.name)
            }
            // Without the subscription nothing is known about any bound device: block at once.
            for d in devices { core.pipeline.withdraw(device: d) }
            let first = link.withLock { l -> Bool in
                l.up = false
                defer { l.lostReported = true }
                return !l.lostReported
            }
            let cause = Self.cause(of: error)
            core.update {
                $0.clientsConnected = 0
                if first { $0.brokerLosses += 1 }
            }
            core.logRateLimited(key: "opcua_\(cause.rawValue)", received: now) { suppressed in
                core.logger.error("opcua feed cannot deliver the twin; its devices block until the subscription is back", metadata: [
                    "source": "\(name)", "cause": "\(cause.rawValue)", "error": "\(error)", "retry_in_ms": "\(retry)",
                    "suppressed": "\(suppressed)"])
            }
            if first { report(.lost, cause, error.description, now) }
        }
    }

    private func submit(_ state: TwinState, _ now: ClockReading) {
        if retired.withLock({ $0.contains(state.device) }) { return }
        let outcome = core.pipeline.submit(state)
        switch outcome {
        case .accepted:
            core.update {
                $0.lines += 1
                $0.accepted += 1
                $0.devices[state.device, default: DeviceTwinCounters()].accepted += 1
            }
        case .identityFailure(_, let drop), .dropped(let drop):
            core.countDrop(drop, received: now, lineNumber: 0, where: "opcua \(state.device)")
        }
    }

    private func heartbeats(_ beats: (stalled: [(device: String, detail: String)], resumed: [String]), _ now: ClockReading) {
        for (device, detail) in beats.stalled {
            core.pipeline.withdraw(device: device)
            core.logger.error("opcua heartbeat stalled; the device's twin counts as silent and it blocks", metadata: [
                "source": "\(name)", "device": "\(device)", "detail": "\(detail)"])
            report(.lost, .heartbeatStalled, detail, now)
        }
        for device in beats.resumed {
            core.logger.notice("opcua heartbeat moves again", metadata: ["source": "\(name)", "device": "\(device)"])
            report(.restored, .heartbeatMoving, "\(device): heartbeat moves again", now)
        }
    }

    private func report(_ kind: TwinFeedEvent.Kind, _ cause: TwinFeedEvent.Cause, _ detail: String, _ now: ClockReading) {
        events?(TwinFeedEvent(source: name, kind: kind, cause: cause, detail: detail, time: now))
    }

    /// The audit's cause for a lost subscription.
    static func cause(of e: OPCUAError) -> TwinFeedEvent.Cause {
        switch e.kind {
        case .badEndpoint, .connect: return .serverUnreachable
        case .refused: return .refused
        case .timeout: return .keepAliveMissing
        case .closedByPeer, .socket, .channelClosed, .aborted, .serverError: return .connectionLost
        case .serviceFault(let s):
            if s == .badUserAccessDenied || s == .badIdentityTokenRejected || s == .badIdentityTokenInvalid { return .refused }
            return .sessionLost
        case .protocolViolation, .limitExceeded, .decoding, .securityCheckFailed: return .protocolError
        }
    }
}

extension TwinOPCUASource.Settings {
    /// The settings of a configured `opcua` feed and the maps bound to it. Refuses, naming the
    /// config line, an incomplete security block (Basic256Sha256 needs its mode, the
    /// appliance's certificate and key, and a trust directory) and a password file other local
    /// users may read.
    package init(_ o: ApplianceConfig.OPCUAFeed, maps: [DeviceMap] = []) throws(TwinFeedConfigError) {
        let security = OPCUASecurity(
            policy: OPCUASecurity.Policy(rawValue: o.security.policy.rawValue) ?? .none,
            mode: OPCUASecurity.Mode(rawValue: o.security.mode.rawValue) ?? .none,
            certificatePath: o.security.certificate?.path, privateKeyPath: o.security.privateKey?.path,
            trustDirectory: o.security.trustDir?.path)
        if let problem = security.problem {
            let at = ApplianceConfig.ConfiguredPath(path: "", keyPath: o.security.policyKeyPath,
                                                    location: o.security.policyLocation ?? SourceLocation(file: "", line: 0, column: 0))
            throw TwinFeedConfigError(file: at, message: problem)
        }
        var options = OPCUAClientOptions()
        options.security = security
        options.timeoutMs = o.timeoutMs
        options.applicationName = "tibet-twin"
        if let user = o.user, let file = o.passwordFile {
            // The client refuses to send it where the server offers encryption (docs/opcua.md).
            options.identity = .userName(user, password: Array(try TwinMQTTSource.Settings.readPassword(file).utf8))
        }
        let bindings = Dictionary(maps.compactMap { m in m.opcua.map { (m.device, $0) } }, uniquingKeysWith: { a, _ in a })
        self.init(endpoint: o.endpoint, options: options, publishingMs: o.publishingMs, reconnectMinMs: o.reconnectMinMs,
                  reconnectMaxMs: o.reconnectMaxMs, security: o.security, bindings: bindings)
    }
}
