import Logging
import Modbus
import Platform
import ServiceLifecycle
import Synchronization
import TibetTwin

#if canImport(Glibc)
import Glibc
#endif

/// The interlock server's settings (docs/config.md `interlock:`), filled by the appliance from its
/// config file.
package struct InterlockConfig: Sendable {
    /// IPv4 or IPv6 literal to listen on (`0.0.0.0`, `::`, `127.0.0.1`).
    package var host: String
    /// TCP port; 0 picks a free one (tests).
    package var port: Int
    /// Unit id answered (0 and 255 are answered too); other unit ids get exception 0x0B.
    package var unit: UInt8
    /// Whether a client address may connect (the `allow` CIDR list); checked at accept.
    package var allow: @Sendable (PeerAddress) -> Bool
    package var maxClients: Int
    /// On shutdown, permits are served as 0 this long before the listener closes.
    package var stopGraceMs: Int
    /// A client with no complete request this long is closed; 0 = never.
    package var idleTimeoutMs: Int
    /// A partial frame older than this closes its connection.
    package var byteTimeoutMs: Int

    /// Defaults of docs/config.md, but loopback only: nobody else is served until the config says so.
    package init(host: String = "0.0.0.0", port: Int = 502, unit: UInt8 = 1,
                allow: @escaping @Sendable (PeerAddress) -> Bool = InterlockConfig.loopbackOnly,
                maxClients: Int = 16, stopGraceMs: Int = 2000, idleTimeoutMs: Int = 60_000,
                byteTimeoutMs: Int = 500) {
        self.host = host
        self.port = port
        self.unit = unit
        self.allow = allow
        self.maxClients = maxClients
        self.stopGraceMs = stopGraceMs
        self.idleTimeoutMs = idleTimeoutMs
        self.byteTimeoutMs = byteTimeoutMs
    }

    /// The settings of a parsed config file's `interlock:` section (whose parser has already
    /// checked the unit id is 1…247 and every CIDR).
    package init(_ c: ApplianceConfig.Interlock) {
        let networks = c.allow
        self.init(host: c.listen.host, port: c.listen.port, unit: UInt8(clamping: c.unit),
                  allow: { peer in networks.contains { $0.contains(peer.bytes) } },
                  maxClients: c.maxClients, stopGraceMs: c.stopGraceMs, idleTimeoutMs: c.idleTimeoutMs,
                  byteTimeoutMs: c.byteTimeoutMs)
    }

    /// 127.0.0.0/8 and ::1.
    package static let loopbackOnly: @Sendable (PeerAddress) -> Bool = { peer in
        if peer.bytes.count == 4 { return peer.bytes[0] == 127 }
        return peer.bytes == [UInt8](repeating: 0, count: 15) + [1]
    }
}

/// What the interlock reports for the audit trail (docs/interlock.md, docs/audit.md: `write_rejected`,
/// `client_refused`). Every occurrence is reported; only the log is rate-limited.
package enum InterlockEvent: Sendable, Hashable {
    /// A write function was refused with an exception; nothing changed.
    case writeRejected(client: String, unit: UInt8, function: UInt8, address: UInt16?, count: UInt16?)
    /// A connection was closed at accept (`not_allowed`, `too_many_clients`, `descriptor_limit`).
    case clientRefused(client: String, reason: String)
    /// A Sparkplug command (NCMD / DCMD) to the permit publisher that tried to write: refused,
    /// ignored (docs/mqtt.md#publishing-the-permits). `why`: `ncmd_write`, `dcmd_write`, `not_sparkplug`.
    case mqttCommandRefused(broker: String, topic: String, metrics: [String], why: String)
}

/// Why the interlock server could not start.
package struct InterlockError: Error, Sendable, Hashable, CustomStringConvertible {
    package var underlying: ModbusServerError
    package var description: String { "interlock server \(underlying)" }
}

/// The interlock server (docs/interlock.md): serves the current `PermitTable` as read-only coils,
/// discrete inputs, input and holding registers over Modbus/TCP to the interlock PLCs.
///
/// Fail-safe by construction: it serves `PermitTable.allBlocked` until the first `publish`;
/// `beginShutdown()` serves every permit as 0 for `stopGraceMs` (and ignores later publishes)
/// before the listener closes. Writes are refused with exception 1 and reported to `events`.
/// The socket work runs on the server's own thread (`ModbusServer`); `publish` only
/// swaps a reference under a lock and never waits on a client.
package final class InterlockServer: Service, Sendable {
    /// The port actually bound.
    package var port: Int { server.port }
    /// `host:port` as bound.
    package var address: String { server.address }

    private let server: ModbusServer
    private let config: InterlockConfig
    private let state: Mutex<State>
    private let logLimiter: LogRateLimiter

    private struct State {
        var table: PermitTable
        var shuttingDown = false
        var started = false
    }

    /// Binds the listener (a taken port or bad address fails here) serving `allBlocked(layout)`.
    /// `events` is called on the server thread for every refused write and refused client: it
    /// must not block (hand the event to the audit writer's queue).
    package init(config: InterlockConfig, layout: InterlockLayout, logger: Logger = Logger(label: "tibet-twin.interlock"),
                events: @escaping @Sendable (InterlockEvent) -> Void = { _ in }) throws(InterlockError) {
        let initial = PermitTable.allBlocked(layout: layout)
        let limiter = LogRateLimiter(logger: logger, intervalNs: 10_000_000_000)
        var serverConfig = ModbusServer.Configuration(
            host: config.host, port: config.port, unit: config.unit, maxClients: config.maxClients,
            idleTimeoutMs: config.idleTimeoutMs, byteTimeoutMs: config.byteTimeoutMs,
            allow: config.allow, threadName: "interlock")
        serverConfig.threadStart = { SafetyPriority.raiseCurrentThread("interlock server", logger: logger) }
        do {
            server = try ModbusServer(configuration: serverConfig, image: InterlockServer.image(initial)) { event in
                InterlockServer.report(event, events: events, log: limiter)
            }
        } catch {
            throw InterlockError(underlying: error)
        }
        self.config = config
        self.state = Mutex(State(table: initial))
        self.logLimiter = limiter
    }

    /// Starts serving (idempotent).
    package func start() throws(InterlockError) {
        let first = state.withLock { s in
            defer { s.started = true }
            return !s.started
        }
        guard first else { return }
        do {
            try server.start()
        } catch {
            throw InterlockError(underlying: error)
        }
        logLimiter.logger.info("interlock serving", metadata: ["listen": "\(server.address)", "unit": "\(config.unit)"])
    }

    /// Swaps in `table` atomically: the next request is answered from it, and no reply mixes
    /// two tables. Ignored once `beginShutdown()` has been called.
    package func publish(_ table: PermitTable) {
        state.withLock { s in
            guard !s.shuttingDown else { return }
            if server.publish(InterlockServer.image(table)) { s.table = table }
        }
    }

    /// The table served now.
    package var table: PermitTable { state.withLock { $0.table } }

    /// Sets every permit to 0 at once (later publishes are ignored), keeps serving the zeros for
    /// `stopGraceMs`, then closes the listener and every client. Returns at once.
    package func beginShutdown() {
        beginShutdown(graceMs: config.stopGraceMs)
    }

    private func beginShutdown(graceMs: Int) {
        let first = state.withLock { s -> Bool in
            if s.shuttingDown { return false }
            s.shuttingDown = true
            s.table = s.table.blockingAll()
            server.seal(InterlockServer.image(s.table))
            return true
        }
        if first {
            logLimiter.logger.notice("interlock shutting down: permits 0", metadata: ["grace_ms": "\(graceMs)"])
        }
        server.stop(afterMilliseconds: graceMs)
    }

    /// Shuts down as `beginShutdown()` does and returns when the listener has closed.
    package func stop() async {
        beginShutdown()
        await server.waitUntilStopped()
    }

    /// Sets every permit to 0 and closes at once, without a grace period; blocks the calling
    /// thread until the listener is closed (a few ms at most). For aborts and tests.
    package func stopImmediately() {
        beginShutdown(graceMs: 0)
        server.join()
    }

    /// Counters since start, for metrics.
    package func counters() -> ModbusServerCounters { server.counters() }

    /// Serves until graceful shutdown (then permits 0 for the grace period, then closes) or
    /// cancellation (permits 0 and close at once).
    package func run() async throws {
        try start()
        await withTaskCancellationHandler {
            await withGracefulShutdownHandler {
                await server.waitUntilStopped()
            } onGracefulShutdown: {
                self.beginShutdown()
            }
        } onCancel: {
            self.beginShutdown(graceMs: 0)
        }
    }

    deinit {
        server.stop()
    }

    static func image(_ t: PermitTable) -> ModbusImage {
        ModbusImage(coils: t.bits, discreteInputs: t.bits, holdingRegisters: t.registers, inputRegisters: t.registers)
    }

    private static func report(_ event: ModbusServerEvent, events: @Sendable (InterlockEvent) -> Void,
                               log: LogRateLimiter) {
        switch event {
        case .writeRejected(let peer, let unit, let function, let address, let count):
            events(.writeRejected(client: peer.description, unit: unit, function: function, address: address, count: count))
            log.warning("write_rejected", "interlock write refused (exception 1, nothing changed)", [
                "client": "\(peer)", "unit": "\(unit)", "function": "\(function)",
                "address": "\(address.map(String.init) ?? "-")", "count": "\(count.map(String.init) ?? "-")",
            ])
        case .refused(let peer, let reason):
            events(.clientRefused(client: peer.description, reason: reason.rawValue))
            log.warning("refused.\(reason.rawValue)", "interlock client refused", [
                "client": "\(peer)", "reason": "\(reason.rawValue)",
            ])
        case .accepted(let peer):
            log.logger.debug("interlock client connected", metadata: ["client": "\(peer)"])
        case .closed(let peer, let reason):
            switch reason {
            case .peerClosed, .serverStopped, .closedByOwner, .idleTimeout:
                log.logger.debug("interlock client closed", metadata: ["client": "\(peer)", "reason": "\(reason)"])
            case .malformed, .byteTimeout, .writeStall, .socketError:
                log.warning("closed", "interlock client closed", ["client": "\(peer)", "reason": "\(reason)"])
            }
        case .acceptFailed(let e):
            log.warning("accept_failed", "interlock accept failed; listener paused 100 ms",
                        ["errno": "\(ModbusError.errnoName(e))"])
        case .replyFailed(let peer, let error):
            log.logger.error("interlock reply failed", metadata: ["client": "\(peer)", "error": "\(error)"])
        }
    }
}

/// At most one log line per key per interval; the next line says how many were left out.
/// The counters and the audit events are never limited, only the log.
final class LogRateLimiter: Sendable {
    let logger: Logger
    private let limit: Mutex<RateLimit>

    init(logger: Logger, intervalNs: Int64) {
        self.logger = logger
        self.limit = Mutex(RateLimit(intervalNs: intervalNs))
    }

    /// Logs at warning level unless a line with this key was logged less than the interval
    /// ago. `metadata` is only built for lines actually written.
    func warning(_ key: String, _ message: String, _ metadata: @autoclosure () -> Logger.Metadata) {
        let now = monotonicNowNs()
        guard let suppressed = limit.withLock({ $0.admit(key, nowNs: now) }) else { return }
        var md = metadata()
        if suppressed > 0 { md["suppressed_since_last"] = "\(suppressed)" }
        logger.warning("\(message)", metadata: md)
    }
}
