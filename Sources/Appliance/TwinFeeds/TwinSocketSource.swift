import Logging
import NIOCore
import NIOPosix
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
/// Runs on a SwiftNIO event loop — by default its own one-thread loop, so nothing else in the
/// process (the HTTP API, another listener) can delay twin lines: parsing and signature checks happen on the loop thread, in
/// the order bytes arrive, and a slow consumer is throttled by TCP flow control (the socket
/// buffer fills, the twin's writes block) — memory stays bounded at one read buffer and one
/// partial line per client. The unix socket is created mode 0660 and removed on `stop()`.
package final class TwinSocketSource: Sendable {
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

        package init(maxClients: Int = 32, garbageLimit: Int = 100, unixMode: mode_t = 0o660, logIntervalSeconds: Double = 60) {
            self.maxClients = maxClients
            self.garbageLimit = garbageLimit
            self.unixMode = unixMode
            self.logIntervalSeconds = logIntervalSeconds
        }
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
        var clients: [ObjectIdentifier: any Channel] = [:]
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
            .childChannelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 1024, initial: 16_384, maximum: 65_536))
            .childChannelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(TwinLineHandler(source: self))
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
            let r = (s.server, Array(s.clients.values), s.ownGroup)
            s.server = nil
            s.ownGroup = nil
            return r  // the clients leave `clients` as they close (`release`), keeping the counters right
        }
        if let server { try? await server.close() }
        for c in clients { try? await c.close() }
        if server != nil, case .unix(let path) = endpoint { unlink(path) }
        try? await own?.shutdownGracefully()
    }

    /// Registers a connected client; false when over `maxClients` or stopping.
    func admit(_ channel: any Channel) -> Bool {
        let ok = state.withLock { s -> Bool in
            guard !s.stopped, s.clients.count < options.maxClients else { return false }
            s.clients[ObjectIdentifier(channel)] = channel
            return true
        }
        core.update {
            if ok { $0.clientsAccepted += 1; $0.clientsConnected += 1 } else { $0.clientsRefused += 1 }
        }
        return ok
    }

    func release(_ channel: any Channel) {
        let was = state.withLock { $0.clients.removeValue(forKey: ObjectIdentifier(channel)) != nil }
        if was { core.update { $0.clientsConnected -= 1 } }
    }
}

/// One client connection: frames lines, hands them to the source's core, cuts off garbage.
/// Confined to the channel's event loop.
final class TwinLineHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    let source: TwinSocketSource
    var framer = LineFramer(maxLineBytes: TwinLineParser.maxLineBytes)
    var lineNumber: UInt64 = 0
    var consecutiveBad = 0
    var peer = "?"
    var admitted = false
    var cut = false

    init(source: TwinSocketSource) { self.source = source }

    var core: TwinSourceCore { source.core }

    func channelActive(context: ChannelHandlerContext) {
        peer = context.remoteAddress.map { Self.describe($0) } ?? "local"
        admitted = source.admit(context.channel)
        if !admitted {
            core.logger.warning("twin client refused: too many clients", metadata: [
                "source": "\(core.name)", "client": "\(peer)", "max_clients": "\(source.options.maxClients)"])
            cut = true
            context.close(promise: nil)
            return
        }
        core.logger.info("twin client connected", metadata: ["source": "\(core.name)", "client": "\(peer)"])
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !cut else { return }
        let buffer = unwrapInboundIn(data)
        let received = core.clock.now()
        let n = buffer.readableBytes
        core.update { $0.bytes += UInt64(n) }
        var cutReason: String?
        let limit = source.options.garbageLimit
        buffer.withUnsafeReadableBytes { raw in
            framer.feed(raw) { event in
                lineNumber += 1
                switch event {
                case .line(let line):
                    guard let outcome = core.handle(line, received: received, lineNumber: lineNumber, where: "\(peer) line \(lineNumber)") else {
                        return true
                    }
                    if case .accepted = outcome { consecutiveBad = 0 } else { consecutiveBad += 1 }
                    if consecutiveBad >= limit {
                        cutReason = "\(limit) bad lines in a row"
                        return false
                    }
                case .tooLong(let length):
                    core.countDrop(TwinDrop(reason: .tooLong, detail: "line longer than \(TwinLineParser.maxLineBytes) bytes (\(length) so far)"),
                                   received: received, lineNumber: lineNumber, where: "\(peer) line \(lineNumber)")
                    cutReason = "a line longer than \(TwinLineParser.maxLineBytes) bytes"
                    return false
                }
                return true
            }
        }
        if let cutReason {
            cut = true
            _ = framer.reset()
            core.update { $0.clientsCutOff += 1 }
            core.logger.warning("twin client disconnected: it sent \(cutReason)", metadata: [
                "source": "\(core.name)", "client": "\(peer)", "line": "\(lineNumber)"])
            context.close(promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if admitted {
            if !cut, framer.pendingBytes > 0 {
                lineNumber += 1
                core.countDrop(TwinDrop(reason: .incompleteLine, detail: "the client disconnected in the middle of a line"),
                               received: core.clock.now(), lineNumber: lineNumber, where: "\(peer) line \(lineNumber)")
            }
            source.release(context.channel)
            core.logger.info("twin client disconnected", metadata: ["source": "\(core.name)", "client": "\(peer)", "lines": "\(lineNumber)"])
        }
        _ = framer.reset()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        core.logger.debug("twin client connection error", metadata: ["source": "\(core.name)", "client": "\(peer)", "error": "\(error)"])
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
