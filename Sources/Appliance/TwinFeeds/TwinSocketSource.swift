import Logging
import Modbus
import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS
import Platform
import Synchronization
import TibetTwin

#if canImport(Glibc)
import Glibc
#endif

/// A TCP or unix-socket listener for twin clients (docs/config.md `tcp:` / `unix:`): several clients
/// at once, each sending feed lines; line framing with the 64 KiB cap. A client that exceeds the
/// cap, or sends `garbageLimit` bad lines in a row (nothing accepted in between), is
/// disconnected; everyone else carries on. Nothing is ever written back.
///
/// The twin must always find a free slot (a twin that cannot connect holds every permit at 0),
/// so slots are guarded as the interlock guards its own (docs/twin-feed.md, "Who may connect"):
/// a TCP peer outside `allow` or over `maxClientsPerAddress` is closed at accept, before any
/// TLS handshake; a client that sent no accepted line for `idleTimeoutMs`, or whose line stays
/// incomplete for `lineTimeoutMs`, is closed. With `tls`, a client must present a certificate
/// signed by the configured CA or the handshake fails and nothing it sends is read.
///
/// Runs on a SwiftNIO event loop — by default its own one-thread loop, so nothing else in the
/// process (the HTTP API, another listener) can delay twin lines: parsing and signature checks happen on the loop thread, in
/// the order bytes arrive, and a slow consumer is throttled by TCP flow control (the socket
/// buffer fills, the twin's writes block) — memory stays bounded per client at its socket's
/// receive buffer (`receiveBufferBytes`), the reads holding lines not yet taken (at most
/// `TwinLineHandler.maxHeld` lines) and one partial line. The unix socket is created mode 0660 and removed on `stop()`.
package final class TwinSocketSource: Sendable {
    /// `SO_RCVBUF` of each client's socket (the kernel doubles it and advertises about half of
    /// that as the window; capped by `net.core.rmem_max`).
    static let receiveBufferBytes = 512 * 1024

    /// Where to listen.
    package enum Endpoint: Sendable, Hashable, CustomStringConvertible {
        /// Host (an address such as `127.0.0.1` or `0.0.0.0`) and port (0: any free port).
        case tcp(host: String, port: Int)
        case unix(path: String)

        package var description: String {
            switch self {
            case .tcp(let h, let p): return "tcp:\(h):\(p)"
            case .unix(let p): return "unix:\(p)"
            }
        }
    }

    /// Limits per listener.
    package struct Options: Sendable, Hashable {
        /// Clients connected at once; more are closed at accept (descriptors stay bounded).
        package var maxClients: Int
        /// Consecutive bad lines after which a client is cut off (docs/twin-feed.md: garbage-only clients).
        package var garbageLimit: Int
        /// Mode of the unix socket file.
        package var unixMode: mode_t
        /// Minimum seconds between two logs of the same drop reason (docs/twin-feed.md: once per minute).
        package var logIntervalSeconds: Double
        /// TCP: the networks a client may connect from (others are closed at accept). Not
        /// applied to unix sockets (the file mode guards those).
        package var allow: [CIDRBlock]
        /// TCP: clients connected at once from one address (IPv4-mapped IPv6 counts as IPv4).
        package var maxClientsPerAddress: Int
        /// A client that sent no accepted line this long is closed; 0 = never.
        package var idleTimeoutMs: Int
        /// A client whose line stays incomplete this long after its first byte is closed.
        package var lineTimeoutMs: Int
        /// TCP: TLS with client certificates (loaded at start-up); nil = plain TCP.
        package var tls: TwinFeedTLS?

        package init(maxClients: Int = 32, garbageLimit: Int = 100, unixMode: mode_t = 0o660, logIntervalSeconds: Double = 60,
                     allow: [CIDRBlock] = ApplianceConfig.Interlock.defaultAllow, maxClientsPerAddress: Int = 4,
                     idleTimeoutMs: Int = 5000, lineTimeoutMs: Int = 2000, tls: TwinFeedTLS? = nil) {
            self.maxClients = maxClients
            self.garbageLimit = garbageLimit
            self.unixMode = unixMode
            self.logIntervalSeconds = logIntervalSeconds
            self.allow = allow
            self.maxClientsPerAddress = maxClientsPerAddress
            self.idleTimeoutMs = idleTimeoutMs
            self.lineTimeoutMs = lineTimeoutMs
            self.tls = tls
        }

        /// The options of a configured feed (docs/config.md `twin.feeds`); `tls` already loaded.
        package init(_ access: ApplianceConfig.SocketFeedAccess, tls: TwinFeedTLS?) {
            self.init(maxClients: access.maxClients, allow: access.allow, maxClientsPerAddress: access.maxClientsPerAddress,
                      idleTimeoutMs: access.idleTimeoutMs, lineTimeoutMs: access.lineTimeoutMs, tls: tls)
        }
    }

    /// Why a connection was refused at accept.
    enum Refusal: String {
        /// The peer is outside `allow` (or its address is unknown).
        case notAllowed = "not_allowed"
        case tooManyClients = "too_many_clients"
        case tooManyFromAddress = "too_many_from_address"
        case stopping
    }

    package let endpoint: Endpoint
    package let options: Options
    let core: TwinSourceCore
    /// The loop group given at init, or `nil` for one of our own (made on `start`, shut down on `stop`).
    let sharedGroup: (any EventLoopGroup)?
    private let state: Mutex<ListenerState>

    private struct ListenerState {
        var started = false
        var ownGroup: MultiThreadedEventLoopGroup?
        var server: (any Channel)?
        var clients: [ObjectIdentifier: (channel: any Channel, address: [UInt8]?)] = [:]
        /// Clients connected per peer address (TCP).
        var perAddress: [[UInt8]: Int] = [:]
        var stopped = false
        var boundPort: Int?
    }

    package init(endpoint: Endpoint, pipeline: TwinFeedPipeline, options: Options = Options(),
                logger: Logger = Logger(label: "tibet-twin.twin.socket"), clock: any TimeSource = SystemTimeSource(),
                group: (any EventLoopGroup)? = nil) {
        self.endpoint = endpoint
        self.options = options
        self.sharedGroup = group
        self.core = TwinSourceCore(name: endpoint.description, pipeline: pipeline, logger: logger, clock: clock,
                                   logIntervalSeconds: options.logIntervalSeconds)
        self.state = Mutex(ListenerState())
    }

    /// The source's name in logs and metrics: `tcp:<host>:<port>` or `unix:<path>`.
    package var name: String { core.name }

    /// A snapshot of the counters.
    package var counters: TwinFeedCounters { core.snapshot }

    /// The TCP port actually bound (useful with port 0), once started.
    package var localPort: Int? { state.withLock { $0.boundPort } }

    /// Binds and starts accepting; returns once the listener is bound.
    package func start() async throws(TwinSourceError) {
        let own: MultiThreadedEventLoopGroup? = sharedGroup == nil ? MultiThreadedEventLoopGroup(numberOfThreads: 1) : nil
        if let own {
            // A fault line is read and handed to the guard on this thread: the drop path.
            let what = "twin feed \(name)", logger = core.logger
            own.next().execute { SafetyPriority.raiseCurrentThread(what, logger: logger) }
        }
        let fresh = state.withLock { s -> Bool in
            guard !s.started, !s.stopped else { return false }
            s.started = true
            s.ownGroup = own
            return true
        }
        guard fresh else {
            try? await own?.shutdownGracefully()
            throw TwinSourceError(kind: .alreadyStarted, source: name, function: "start", detail: "already started (or stopped)")
        }
        do {
            try await listen(group: own ?? sharedGroup!)
        } catch {
            state.withLock { s in
                s.started = false
                s.ownGroup = nil
            }
            try? await own?.shutdownGracefully()
            throw error
        }
    }

    private func listen(group: any EventLoopGroup) async throws(TwinSourceError) {
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 64)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            // Room for a twin's whole burst (one line per device: 161 KB at 1,000 devices) in
            // the receive window. With the default (128 KiB, half of it window) a burst closed
            // the window, and a fault line sent right behind it waited 2-6 ms in the twin's
            // send queue for the window to reopen (docs/benchmarks.md). Set on the listener,
            // so accepted sockets start with it (the window scale is agreed at the handshake).
            .serverChannelOption(.socketOption(.so_rcvbuf), value: TwinSocketSource.receiveBufferBytes)
            .childChannelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 1024, initial: 16_384, maximum: 65_536))
            .childChannelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    // The gate first: a refused peer is closed before any TLS handshake.
                    let ops = channel.pipeline.syncOperations
                    try ops.addHandler(TwinAdmissionHandler(source: self))
                    if let tls = options.tls {
                        try ops.addHandler(NIOSSLServerHandler(context: tls.context))
                    }
                    try ops.addHandler(TwinLineHandler(source: self))
                }
            }
        let server: any Channel
        do {
            switch endpoint {
            case .tcp(let host, let port):
                server = try await bootstrap.bind(host: host, port: port).get()
            case .unix(let path):
                server = try await bootstrap.bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true).get()
                guard chmod(path, options.unixMode) == 0 else {
                    let e = errno
                    try? await server.close()
                    unlink(path)
                    throw TwinSourceError(kind: .chmod, source: name, function: "chmod", errno: e,
                                          detail: "cannot set mode \(String(options.unixMode, radix: 8)) on \(path)")
                }
            }
        } catch let e as TwinSourceError {
            throw e
        } catch {
            throw TwinSourceError(kind: .bind, source: name, function: "bind", errno: (error as? IOError)?.errnoCode,
                                  detail: "cannot listen: \(error)")
        }
        let port = server.localAddress?.port
        state.withLock {
            $0.server = server
            $0.boundPort = port
        }
        core.logger.info("twin feed listening", metadata: ["source": "\(name)", "port": "\(port.map(String.init) ?? "-")"])
    }

    /// Stops accepting, disconnects every client and, for a unix socket, removes its file.
    /// Safe to call more than once.
    package func stop() async {
        let (server, clients, own): ((any Channel)?, [any Channel], MultiThreadedEventLoopGroup?) = state.withLock { s in
            if s.stopped { return (nil, [], nil) }
            s.stopped = true
            let r = (s.server, s.clients.values.map(\.channel), s.ownGroup)
            s.server = nil
            s.ownGroup = nil
            return r  // the clients leave `clients` as they close (`release`), keeping the counters right
        }
        if let server { try? await server.close() }
        for c in clients { try? await c.close() }
        if server != nil, case .unix(let path) = endpoint { unlink(path) }
        try? await own?.shutdownGracefully()
    }

    /// Registers a connected client from `address` (4 or 16 bytes; nil for a unix peer, or a
    /// TCP peer whose address is unknown, which is refused); nil when admitted.
    func admit(_ channel: any Channel, address: [UInt8]?) -> Refusal? {
        let tcp: Bool
        if case .tcp = endpoint { tcp = true } else { tcp = false }
        let refusal = state.withLock { s -> Refusal? in
            if s.stopped { return .stopping }
            if tcp {
                guard let address, options.allow.contains(where: { $0.contains(address) }) else { return .notAllowed }
                if s.perAddress[address, default: 0] >= options.maxClientsPerAddress { return .tooManyFromAddress }
            }
            if s.clients.count >= options.maxClients { return .tooManyClients }
            let key = tcp ? address : nil
            s.clients[ObjectIdentifier(channel)] = (channel, key)
            if let key { s.perAddress[key, default: 0] += 1 }
            return nil
        }
        core.update {
            if let refusal {
                $0.clientsRefused += 1
                if let reason = TwinClientCloseReason(refusal) { $0.clientsClosed[reason, default: 0] += 1 }
            } else {
                $0.clientsAccepted += 1
                $0.clientsConnected += 1
            }
        }
        return refusal
    }

    func release(_ channel: any Channel) {
        let was = state.withLock { s -> Bool in
            guard let entry = s.clients.removeValue(forKey: ObjectIdentifier(channel)) else { return false }
            if let key = entry.address {
                let n = s.perAddress[key, default: 1] - 1
                s.perAddress[key] = n > 0 ? n : nil
            }
            return true
        }
        if was { core.update { $0.clientsConnected -= 1 } }
    }
}

extension TwinClientCloseReason {
    init?(_ refusal: TwinSocketSource.Refusal) {
        switch refusal {
        case .notAllowed: self = .notAllowed
        case .tooManyClients: self = .tooManyClients
        case .tooManyFromAddress: self = .tooManyFromAddress
        case .stopping: return nil
        }
    }
}

/// The first handler of every client connection: admits it (allow list, limits) when it
/// becomes active, or closes it at once without passing anything on; releases its slot when it
/// closes. Confined to the channel's event loop.
final class TwinAdmissionHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    let source: TwinSocketSource
    var admitted = false

    init(source: TwinSocketSource) { self.source = source }

    func channelActive(context: ChannelHandlerContext) {
        let remote = context.remoteAddress
        let address = remote.flatMap(Self.addressBytes)
        if let refusal = source.admit(context.channel, address: address) {
            let core = source.core
            let peer = remote.map { TwinLineHandler.describe($0) } ?? "unknown"
            core.logRateLimited(key: "refused.\(refusal.rawValue)", received: core.clock.now()) { suppressed in
                core.logger.warning("twin client refused at accept", metadata: [
                    "source": "\(core.name)", "client": "\(peer)", "reason": "\(refusal.rawValue)",
                    "max_clients": "\(source.options.maxClients)",
                    "max_clients_per_address": "\(source.options.maxClientsPerAddress)", "suppressed": "\(suppressed)",
                ])
            }
            context.close(promise: nil)
            return
        }
        admitted = true
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard admitted else { return }
        context.fireChannelRead(data)
    }

    func channelInactive(context: ChannelHandlerContext) {
        // Only an admitted connection reached the handlers after this one.
        guard admitted else { return }
        source.release(context.channel)
        context.fireChannelInactive()
    }

    /// The peer's address as 4 (IPv4, also for IPv4-mapped IPv6) or 16 bytes; nil for a unix peer.
    static func addressBytes(_ a: SocketAddress) -> [UInt8]? {
        switch a {
        case .v4(let v4):
            return withUnsafeBytes(of: v4.address.sin_addr) { PeerAddress(bytes: Array($0), port: 0).bytes }
        case .v6(let v6):
            return withUnsafeBytes(of: v6.address.sin6_addr) { PeerAddress(bytes: Array($0), port: 0).bytes }
        case .unixDomainSocket:
            return nil
        }
    }
}

/// One client connection: frames lines, hands them to the source's core, cuts off garbage and
/// closes a client that is idle (no accepted line for `idleTimeoutMs`) or stuck mid-line (a
/// partial line older than `lineTimeoutMs`). Runs after the admission gate (and TLS), so it only
/// sees admitted clients. Confined to the channel's event loop.
final class TwinLineHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    let source: TwinSocketSource
    var framer = LineFramer(maxLineBytes: TwinLineParser.maxLineBytes)
    /// The client's lines as last accepted per device (a repeat is not parsed again).
    var memo = TwinLineMemo()
    /// A line held back behind news (`channelRead`): the held read it is in, where, its number
    /// and its memo entry (`count` -1: taken).
    struct HeldLine {
        var read: Int
        var start: Int
        var count: Int
        var number: UInt64
        var entry: Int
    }
    /// Held lines in the order they came; those before `heldFront` are all taken.
    var held: [HeldLine] = []
    var heldFront = 0
    /// The reads held lines are in, with when they were read; the read being handled's place
    /// among them once a line of it is held.
    var heldReads: [(buffer: ByteBuffer, received: ClockReading, at: NIODeadline)] = []
    var heldRead: Int?
    /// A task taking the next slice of held lines is scheduled.
    var releaseScheduled = false
    /// Held lines taken per turn of the event loop: between two slices the loop reads what
    /// arrived meanwhile, and takes its news first.
    static let releaseSlice = 64
    /// Beyond this many held lines a read takes them all before it holds more (memory stays
    /// bounded when lines come faster than they are taken).
    static let maxHeld = 4096
    /// Held lines per memo entry, and the parser generation they were looked at with.
    var heldPerEntry: [Int] = []
    var heldGeneration: UInt64 = 0
    /// Why the client is to be cut off, once it is.
    var cutReason: String?
    var lineNumber: UInt64 = 0
    var consecutiveBad = 0
    var peer = "?"
    var active = false
    var cut = false
    /// When the last line was accepted (or the client connected).
    var lastAccepted = NIODeadline.now()
    /// When the partial line held now began; nil when none is held.
    var partialSince: NIODeadline?
    /// TLS feeds: the handshake has completed (the client's certificate was accepted).
    var handshakeDone = false
    /// The pending timeout check and when it fires.
    var check: (task: Scheduled<Void>, at: NIODeadline)?

    init(source: TwinSocketSource) { self.source = source }

    var core: TwinSourceCore { source.core }
    var options: TwinSocketSource.Options { source.options }

    func channelActive(context: ChannelHandlerContext) {
        active = true
        peer = context.remoteAddress.map { Self.describe($0) } ?? "local"
        lastAccepted = .now()
        core.logger.info("twin client connected", metadata: ["source": "\(core.name)", "client": "\(peer)"])
        scheduleCheck(context: context)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !cut else { return }
        let buffer = unwrapInboundIn(data)
        let received = core.clock.now()
        let now = NIODeadline.now()
        core.update { $0.bytes += UInt64(buffer.readableBytes) }
        var sawLine = false
        if held.count - heldFront > Self.maxHeld, !release() {
            cutOff(context: context)
            return
        }
        heldRead = nil
        buffer.withUnsafeReadableBytes { raw in
            let chunk = raw.baseAddress.map { UnsafeRawPointer($0).assumingMemoryBound(to: UInt8.self) }
            framer.feed(raw) { event in
                lineNumber += 1
                sawLine = true
                switch event {
                case .line(let line):
                    // News first (docs/twin-feed.md): a line that repeats its device's
                    // remembered one outside its time and seq is held back and taken in slices
                    // between reads, so a state change behind a burst of repeats reaches the
                    // guard without waiting for them. Each device's lines keep their order:
                    // news of a device first releases that device's held lines; a line whose
                    // device cannot be told without parsing it, or a reload, releases them all.
                    // A line begun in an earlier read is in the framer's buffer, not in this read.
                    let inRead = chunk.flatMap { c in line.baseAddress.map { $0 >= c && $0 + line.count <= c + raw.count } } ?? false
                    let parser = core.pipeline.parser
                    switch memo.sight(line, parser: parser) {
                    case .routine(let k):
                        if !held.isEmpty, heldGeneration != parser.generation {
                            guard release() else { return false }
                        }
                        if held.isEmpty { heldGeneration = parser.generation }
                        let read: Int
                        let start: Int
                        if inRead, let chunk, let base = line.baseAddress {
                            if heldRead == nil {
                                heldRead = heldReads.count
                                heldReads.append((buffer, received, now))
                            }
                            read = heldRead!
                            start = chunk.distance(to: base)
                        } else {
                            // Kept as a read of its own (a copy: the framer reuses its buffer).
                            var copy = ByteBufferAllocator().buffer(capacity: line.count)
                            copy.writeBytes(line)
                            read = heldReads.count
                            heldReads.append((copy, received, now))
                            start = 0
                        }
                        if heldPerEntry.count <= k { heldPerEntry += repeatElement(0, count: memo.entryCount - heldPerEntry.count) }
                        held.append(HeldLine(read: read, start: start, count: line.count, number: lineNumber, entry: k))
                        heldPerEntry[k] += 1
                        // The bad lines in a row restart here (a held line that fails counts when taken).
                        consecutiveBad = 0
                        return true
                    case .news(let k):
                        if !held.isEmpty {
                            if heldGeneration != parser.generation {
                                guard release() else { return false }
                            } else if let k, k < heldPerEntry.count, heldPerEntry[k] > 0 {
                                guard release(entry: k) else { return false }
                            }
                        }
                        return take(line, number: lineNumber, received: received, at: now)
                    case .unnamed:
                        return release() && take(line, number: lineNumber, received: received, at: now)
                    }
                case .tooLong(let length):
                    guard release() else { return false }
                    core.countDrop(TwinDrop(reason: .tooLong, detail: "line longer than \(TwinLineParser.maxLineBytes) bytes (\(length) so far)"),
                                   received: received, lineNumber: lineNumber, where: "\(peer) line \(lineNumber)")
                    cutReason = "a line longer than \(TwinLineParser.maxLineBytes) bytes"
                    return false
                }
            }
        }
        if cutReason != nil {
            cutOff(context: context)
            return
        }
        scheduleRelease(context: context)
        // The age of a partial line counts from the read that began it.
        if framer.pendingBytes > 0 {
            if partialSince == nil || sawLine { partialSince = now }
        } else {
            partialSince = nil
        }
        if let due = nextDeadline(), check.map({ due < $0.at }) ?? true { scheduleCheck(context: context) }
    }

    /// Handles one line; false once the client is to be cut off (`cutReason`).
    private func take(_ line: UnsafeBufferPointer<UInt8>, number: UInt64, received: ClockReading, at now: NIODeadline) -> Bool {
        guard let outcome = core.handle(line, received: received, lineNumber: number, memo: &memo, where: "\(peer) line \(number)") else {
            return true
        }
        if case .accepted = outcome {
            consecutiveBad = 0
            lastAccepted = now
        } else {
            consecutiveBad += 1
        }
        if consecutiveBad >= options.garbageLimit {
            cutReason = "\(options.garbageLimit) bad lines in a row"
            return false
        }
        return true
    }

    /// Takes held lines in order: those of memo entry `entry`, or else all (at most `limit`,
    /// from the front); false once the client is to be cut off (the rest are then dropped).
    private func release(entry: Int? = nil, limit: Int = .max) -> Bool {
        guard heldFront < held.count else { return true }
        var keepGoing = true
        var taken = 0
        var i = heldFront
        while i < held.count, keepGoing {
            let h = held[i]
            if h.count >= 0, entry == nil || h.entry == entry {
                if entry == nil, taken == limit { break }
                held[i].count = -1
                heldPerEntry[h.entry] -= 1
                taken += 1
                let r = heldReads[h.read]
                keepGoing = r.buffer.withUnsafeReadableBytes { raw in
                    take(UnsafeBufferPointer(start: raw.baseAddress!.assumingMemoryBound(to: UInt8.self) + h.start, count: h.count),
                         number: h.number, received: r.received, at: r.at)
                }
            }
            i += 1
        }
        while heldFront < held.count, held[heldFront].count < 0 { heldFront += 1 }
        if !keepGoing || heldFront == held.count {
            if !keepGoing { for k in heldPerEntry.indices { heldPerEntry[k] = 0 } }
            held.removeAll(keepingCapacity: held.capacity <= 2 * Self.maxHeld)
            heldFront = 0
            heldReads.removeAll()
            heldRead = nil
        }
        return keepGoing
    }

    /// Takes the next slice of held lines at the event loop's next turn (after the reads that
    /// are waiting), and so on until none is left.
    private func scheduleRelease(context: ChannelHandlerContext) {
        guard !releaseScheduled, !cut, heldFront < held.count else { return }
        releaseScheduled = true
        // A deadline, not `execute`: the loop runs tasks queued by tasks in the same turn, and
        // only a deadline sends it back to the selector (the reads) in between.
        context.eventLoop.assumeIsolated().scheduleTask(in: .microseconds(20)) { [self] in
            releaseScheduled = false
            guard active, !cut else { return }
            if !release(limit: Self.releaseSlice) {
                cutOff(context: context)
            } else if heldFront < held.count {
                scheduleRelease(context: context)
            } else if let due = nextDeadline(), check.map({ due < $0.at }) ?? true {
                scheduleCheck(context: context)
            }
        }
    }

    /// Disconnects the client for `cutReason`, after taking the held lines (they came before).
    private func cutOff(context: ChannelHandlerContext) {
        let reason = cutReason ?? "bad input"
        _ = release()
        cut = true
        _ = framer.reset()
        core.update { $0.clientsCutOff += 1 }
        core.logger.warning("twin client disconnected: it sent \(reason)", metadata: [
            "source": "\(core.name)", "client": "\(peer)", "line": "\(lineNumber)"])
        context.close(promise: nil)
    }

    /// The earliest moment a timeout could expire; nil when none applies.
    func nextDeadline() -> NIODeadline? {
        var due: NIODeadline?
        if options.idleTimeoutMs > 0 { due = lastAccepted + .milliseconds(Int64(options.idleTimeoutMs)) }
        if let since = partialSince {
            let lineDue = since + .milliseconds(Int64(options.lineTimeoutMs))
            due = due.map { min($0, lineDue) } ?? lineDue
        }
        return due
    }

    /// (Re)schedules the timeout check at `nextDeadline()`.
    func scheduleCheck(context: ChannelHandlerContext) {
        check?.task.cancel()
        check = nil
        guard !cut, let due = nextDeadline() else { return }
        let task = context.eventLoop.assumeIsolated().scheduleTask(deadline: due) { [self] in
            self.check = nil
            self.checkTimeouts(context: context)
        }
        check = (task, due)
    }

    /// Closes the client if a timeout has expired, else checks again at the next deadline.
    func checkTimeouts(context: ChannelHandlerContext) {
        guard active, !cut else { return }
        guard release() else {
            cutOff(context: context)
            return
        }
        let now = NIODeadline.now()
        var reason: TwinClientCloseReason?
        if let since = partialSince, now >= since + .milliseconds(Int64(options.lineTimeoutMs)) {
            reason = .lineTimeout
        } else if options.idleTimeoutMs > 0, now >= lastAccepted + .milliseconds(Int64(options.idleTimeoutMs)) {
            reason = .idleTimeout
        }
        guard let reason else {
            scheduleCheck(context: context)
            return
        }
        cut = true
        let received = core.clock.now()
        if reason == .lineTimeout, framer.pendingBytes > 0 {
            lineNumber += 1
            core.countDrop(TwinDrop(reason: .incompleteLine, detail: "no newline within \(options.lineTimeoutMs) ms of the line's first byte"),
                           received: received, lineNumber: lineNumber, where: "\(peer) line \(lineNumber)")
        }
        _ = framer.reset()
        core.update { $0.clientsClosed[reason, default: 0] += 1 }
        core.logRateLimited(key: "closed.\(reason.rawValue)", received: received) { suppressed in
            core.logger.warning(reason == .idleTimeout ? "twin client closed: no accepted line within the idle timeout"
                                                       : "twin client closed: a line stayed incomplete beyond the line timeout", metadata: [
                "source": "\(core.name)", "client": "\(peer)", "reason": "\(reason.rawValue)",
                "timeout_ms": "\(reason == .idleTimeout ? options.idleTimeoutMs : options.lineTimeoutMs)",
                "suppressed": "\(suppressed)",
            ])
        }
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        check?.task.cancel()
        check = nil
        if !cut { _ = release() }  // lines read before the end, not taken yet
        if active {
            if !cut, framer.pendingBytes > 0 {
                lineNumber += 1
                core.countDrop(TwinDrop(reason: .incompleteLine, detail: "the client disconnected in the middle of a line"),
                               received: core.clock.now(), lineNumber: lineNumber, where: "\(peer) line \(lineNumber)")
            }
            core.logger.info("twin client disconnected", metadata: ["source": "\(core.name)", "client": "\(peer)", "lines": "\(lineNumber)"])
        }
        active = false
        _ = framer.reset()
        context.fireChannelInactive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let tls = event as? TLSUserEvent, case .handshakeCompleted = tls { handshakeDone = true }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if !cut { _ = release() }  // lines read before the error, not taken yet
        let first = !cut
        cut = true
        if !first {
            context.close(promise: nil)
            return
        }
        if options.tls != nil, !handshakeDone {
            // A client without a certificate signed by the configured CA (or not speaking TLS):
            // the handshake failed, nothing it sent was read.
            core.update { $0.clientsClosed[.tlsFailed, default: 0] += 1 }
            core.logRateLimited(key: "closed.tls_failed", received: core.clock.now()) { suppressed in
                core.logger.warning("twin client closed: TLS handshake failed", metadata: [
                    "source": "\(core.name)", "client": "\(peer)", "error": "\(error)", "suppressed": "\(suppressed)"])
            }
        } else {
            core.logger.debug("twin client connection error", metadata: ["source": "\(core.name)", "client": "\(peer)", "error": "\(error)"])
        }
        context.close(promise: nil)
    }

    static func describe(_ a: SocketAddress) -> String {
        switch a {
        case .unixDomainSocket: return "unix-client"
        default:
            if let ip = a.ipAddress, let port = a.port { return "\(ip):\(port)" }
            return "\(a)"
        }
    }
}
