import CModbus
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A hardened, read-only Modbus/TCP server: one non-blocking epoll loop on its own thread owns
/// the listening socket, every client socket and their frame buffers.
///
/// Why not the stock libmodbus loop (`select` + `modbus_receive` + `modbus_reply`): in 3.1.6
/// `modbus_receive` blocks on one socket until its frame is complete (one slow client stalls
/// everyone), `modbus_reply` sleeps 0.5 s on a bad quantity or unknown function, protocol id
/// and length are not checked, every unit id is answered, and `select()` aborts the process on
/// a descriptor ≥ 1024. Here the loop reads whatever bytes are there, frames and validates them
/// itself (`ModbusRequestCheck`), and only then lets libmodbus build the answer
/// (`ModbusReplier`: `modbus_reply` for valid reads, `modbus_reply_exception` otherwise).
///
/// Each request is answered from one `ModbusImage`, read under a lock held for one reference
/// load; `publish` swaps the image the same way. Writes never change anything: they get
/// exception 1 and are reported as events.
public final class ReadOnlyModbusServer: Sendable {
    /// How the server listens and whom it serves.
    public struct Configuration: Sendable {
        /// IPv4 or IPv6 literal (`0.0.0.0`, `::`, `127.0.0.1`) or a host name, resolved once at
        /// start (its first IPv4 address, else its first IPv6 address).
        public var host: String
        /// TCP port; 0 picks a free one (read it back from `port`).
        public var port: Int
        /// The unit id answered, besides 0 and 255 (the Modbus/TCP "this device").
        public var unit: UInt8
        /// Connections at once; more are accepted and closed at once.
        public var maxClients: Int
        /// A client with no complete request for this long is closed; 0 = never.
        public var idleTimeoutMs: Int
        /// A client whose frame is still incomplete this long after its first byte is closed.
        public var byteTimeoutMs: Int
        /// A client that takes none of its pending replies for this long is closed.
        public var writeStallTimeoutMs: Int
        /// Decides at accept whether a peer may connect.
        public var allow: @Sendable (PeerAddress) -> Bool
        /// Descriptors at or above this are refused (libmodbus's `select()` elsewhere in the
        /// process aborts on ≥ 1024, so the server never holds one).
        public var descriptorLimit: Int32
        /// Name of the loop thread (at most 15 bytes), for `top -H` and debuggers.
        public var threadName: String

        /// Defaults: unit 1, 16 clients, idle 60 s, byte timeout 0.5 s, write stall 5 s, everyone
        /// allowed, descriptors below 1024.
        public init(host: String, port: Int, unit: UInt8 = 1, maxClients: Int = 16, idleTimeoutMs: Int = 60_000,
                    byteTimeoutMs: Int = 500, writeStallTimeoutMs: Int = 5_000,
                    allow: @escaping @Sendable (PeerAddress) -> Bool = { _ in true },
                    descriptorLimit: Int32 = 1024, threadName: String = "modbus-server") {
            self.host = host
            self.port = port
            self.unit = unit
            self.maxClients = maxClients
            self.idleTimeoutMs = idleTimeoutMs
            self.byteTimeoutMs = byteTimeoutMs
            self.writeStallTimeoutMs = writeStallTimeoutMs
            self.allow = allow
            self.descriptorLimit = descriptorLimit
            self.threadName = threadName
        }
    }

    /// The port actually bound (useful with `port: 0`).
    public let port: Int
    /// `host:port` as bound, for messages.
    public let address: String
    let shared: SharedServerState
    private let pending: Mutex<ServerLoop?>

    /// Binds and listens at once (so a bad address or a taken port fails here, and `port` is
    /// known), but serves nothing until `start()`. Until the first `publish`, reads are answered
    /// from `image`.
    public init(configuration: Configuration, image: ModbusImage,
                events: @escaping @Sendable (ModbusServerEvent) -> Void = { _ in }) throws(ModbusServerError) {
        let shared = SharedServerState(image: image)
        let loop = try ServerLoop(configuration: configuration, shared: shared, events: events)
        self.shared = shared
        self.port = loop.boundPort
        self.address = configuration.host.contains(":") ? "[\(configuration.host)]:\(loop.boundPort)"
            : "\(configuration.host):\(loop.boundPort)"
        self.pending = Mutex(loop)
    }

    /// Starts the loop thread.
    public func start() throws(ModbusServerError) {
        guard let loop = pending.withLock({ $0.take() }) else {
            throw ModbusServerError(kind: .state, function: "start", errno: 0, address: address)
        }
        let name = loop.configuration.threadName
        let box = Unmanaged.passRetained(LoopThreadBox(loop)).toOpaque()
        var tid = pthread_t()
        let rc = pthread_create(&tid, nil, { arg in
            let box = Unmanaged<LoopThreadBox>.fromOpaque(arg!).takeRetainedValue()
            let loop = box.take()
            loop.run()
            return nil
        }, box)
        if rc != 0 {
            Unmanaged<LoopThreadBox>.fromOpaque(box).release()
            throw ModbusServerError(kind: .eventLoop, function: "pthread_create", errno: rc, address: address)
        }
        _ = CModbus_pthread_setname_np(tid, String(decoding: name.utf8.prefix(15), as: UTF8.self))
        shared.control.withLock { $0.thread = tid }
    }

    /// Swaps in a new image atomically; the next request is answered from it. Returns false
    /// (and changes nothing) once `seal` has been called.
    @discardableResult
    public func publish(_ image: ModbusImage) -> Bool {
        shared.published.withLock { p in
            if p.sealed { return false }
            p.image = image
            p.count &+= 1
            return true
        }
    }

    /// Publishes `image` as the last one: every later `publish` is ignored. Used on shutdown
    /// so nothing can raise a permit again while the grace period serves zeros.
    public func seal(_ image: ModbusImage) {
        shared.published.withLock { p in
            p.image = image
            p.count &+= 1
            p.sealed = true
        }
    }

    /// The image requests are answered from now.
    public var image: ModbusImage { shared.published.withLock { $0.image } }

    /// A snapshot of the counters.
    public func counters() -> ModbusServerCounters {
        var c = shared.counters.withLock { $0 }
        c.publishes = shared.published.withLock { $0.count }
        return c
    }

    /// Asks the loop to close every client and the listener and end; returns at once.
    public func stop() {
        if pending.withLock({ $0.take() }) != nil {
            // Never started: the loop object (and with it every descriptor) is gone already.
            shared.finish()
            return
        }
        shared.control.withLock { $0.stopRequested = true }
        shared.wake()
    }

    /// Keeps serving for `ms` more milliseconds, then stops as `stop()` does; returns at once.
    /// An earlier deadline (or `stop()`) wins.
    public func stop(afterMilliseconds ms: Int) {
        if ms <= 0 || pending.withLock({ $0 != nil }) { return stop() }
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        let at = Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec) + Int64(ms) * 1_000_000
        shared.control.withLock { c in
            if c.stopAt == 0 || at < c.stopAt { c.stopAt = at }
        }
        shared.wake()
    }

    /// Blocks the calling thread until the loop thread has ended (after `stop()`). Not for the
    /// Swift concurrency pool: use `waitUntilStopped()` there.
    public func join() {
        let tid: pthread_t? = shared.control.withLock { c in
            defer { c.thread = nil }
            return c.thread
        }
        if let tid { pthread_join(tid, nil) }
    }

    /// Waits until the loop thread has closed every socket (after `stop()`).
    public func waitUntilStopped() async {
        await withCheckedContinuation { (cont: CheckedContinuation<Void, Never>) in
            let done = shared.control.withLock { c -> Bool in
                if c.finished { return true }
                c.waiters.append(cont)
                return false
            }
            if done { cont.resume() }
        }
    }

    deinit {
        // The loop thread ends by itself after stop(); join it so its resources are released,
        // unless this deinit runs on that very thread (an event sink holding the last reference).
        stop()
        let tid: pthread_t? = shared.control.withLock { c in
            defer { c.thread = nil }
            return c.thread
        }
        if let tid {
            if pthread_equal(tid, pthread_self()) != 0 {
                pthread_detach(tid)
            } else {
                pthread_join(tid, nil)
            }
        }
    }
}

/// State the owner and the loop thread share, each part behind its own lock.
final class SharedServerState: Sendable {
    struct Published {
        var image: ModbusImage
        var sealed = false
        var count: UInt64 = 0
    }

    struct Control {
        var stopRequested = false
        /// Monotonic ns at which the loop stops by itself; 0 = not set.
        var stopAt: Int64 = 0
        var finished = false
        /// eventfd that interrupts `epoll_wait`; -1 once the loop has closed it. Written only
        /// under this lock, so a wake-up can never hit a descriptor number reused after close.
        var wakeFd: Int32 = -1
        var thread: pthread_t?
        var waiters: [CheckedContinuation<Void, Never>] = []
    }

    let published: Mutex<Published>
    let counters = Mutex(ModbusServerCounters())
    let control = Mutex(Control())

    init(image: ModbusImage) {
        published = Mutex(Published(image: image))
    }

    func wake() {
        control.withLock { c in
            if c.wakeFd >= 0 {
                var one: UInt64 = 1
                _ = write(c.wakeFd, &one, 8)
            }
        }
    }

    /// Marks the loop finished and resumes everyone waiting for it.
    func finish() {
        let waiters = control.withLock { c -> [CheckedContinuation<Void, Never>] in
            c.finished = true
            defer { c.waiters = [] }
            return c.waiters
        }
        for w in waiters { w.resume() }
    }
}

/// Hands the loop object to its thread exactly once.
private final class LoopThreadBox {
    private var loop: ServerLoop?
    init(_ loop: ServerLoop) { self.loop = loop }
    func take() -> ServerLoop { loop.take()! }
}

/// One client connection. Confined to the loop thread.
final class ServerConnection {
    let fd: Int32
    let peer: PeerAddress
    /// Received bytes not yet consumed; at most one partial frame stays between reads.
    let input: UnsafeMutableRawBufferPointer
    var inputCount = 0
    /// Replies not yet taken by the kernel, from `outputOffset` on.
    var output: [UInt8] = []
    var outputOffset = 0
    /// Monotonic ns when the incomplete frame at the front began arriving; 0 when none.
    var partialSince: Int64 = 0
    /// Monotonic ns of the last complete request (or of accept).
    var lastRequest: Int64
    /// Monotonic ns since which replies wait with no progress; 0 when none wait.
    var stalledSince: Int64 = 0
    /// The epoll events currently registered.
    var registered: UInt32

    static let inputCapacity = 2048 + ModbusRequestCheck.maxFrameLength

    init(fd: Int32, peer: PeerAddress, now: Int64, events: UInt32) {
        self.fd = fd
        self.peer = peer
        self.lastRequest = now
        self.registered = events
        input = UnsafeMutableRawBufferPointer.allocate(byteCount: ServerConnection.inputCapacity, alignment: 8)
        output.reserveCapacity(512)
    }

    deinit {
        input.deallocate()
    }

    var pendingOutput: Int { output.count - outputOffset }
}

/// The event loop: everything here runs on the loop thread only.
final class ServerLoop {
    let configuration: ReadOnlyModbusServer.Configuration
    let shared: SharedServerState
    let events: @Sendable (ModbusServerEvent) -> Void
    let boundPort: Int
    private let listenFd: Int32
    private let epollFd: Int32
    private let wakeFd: Int32
    private let replier: ModbusReplier
    private var connections: [ServerConnection?]
    private var clientCount = 0
    private var mapped: ModbusImage?
    private var delta = ModbusServerCounters()
    private var listenerPausedUntil: Int64 = 0
    private var now: Int64 = 0
    private let sweepIntervalNs: Int64

    private static let readChunk = 2048
    private static let outputHighWater = 64 * 1024
    private static let epollIn = EPOLLIN.rawValue
    private static let epollOut = EPOLLOUT.rawValue
    private static let epollErr = EPOLLERR.rawValue | EPOLLHUP.rawValue

    init(configuration: ReadOnlyModbusServer.Configuration, shared: SharedServerState,
         events: @escaping @Sendable (ModbusServerEvent) -> Void) throws(ModbusServerError) {
        self.configuration = configuration
        self.shared = shared
        self.events = events
        let where_ = "\(configuration.host):\(configuration.port)"
        var fds: [Int32] = []
        func fail(_ kind: ModbusServerError.Kind, _ function: String, _ e: Int32) -> ModbusServerError {
            for fd in fds { close(fd) }
            return ModbusServerError(kind: kind, function: function, errno: e, address: where_)
        }

        // The listening socket.
        guard var addr = SocketAddress(host: configuration.host, port: configuration.port) else {
            throw ModbusServerError(kind: .badAddress, function: "inet_pton", errno: EINVAL, address: where_)
        }
        let lfd = socket(addr.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        if lfd < 0 { throw fail(.listen, "socket", errno) }
        fds.append(lfd)
        if lfd >= configuration.descriptorLimit { throw fail(.descriptorLimit, "socket", EMFILE) }
        var yes: Int32 = 1
        _ = setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &yes, socklen_t(MemoryLayout<Int32>.size))
        if addr.family == AF_INET6 {
            var no: Int32 = 0  // dual stack: `::` also takes IPv4 clients
            _ = setsockopt(lfd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &no, socklen_t(MemoryLayout<Int32>.size))
        }
        if addr.withSockaddr({ bind(lfd, $0, $1) }) != 0 { throw fail(.listen, "bind", errno) }
        if listen(lfd, 128) != 0 { throw fail(.listen, "listen", errno) }
        var bound = sockaddr_storage()
        var blen = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let grc = withUnsafeMutablePointer(to: &bound) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(lfd, $0, &blen) }
        }
        if grc != 0 { throw fail(.listen, "getsockname", errno) }
        boundPort = Int(PeerAddress(bound)?.port ?? 0)

        // The loop's own descriptors.
        let ep = epoll_create1(Int32(EPOLL_CLOEXEC))
        if ep < 0 { throw fail(.eventLoop, "epoll_create1", errno) }
        fds.append(ep)
        let wfd = eventfd(0, Int32(EFD_NONBLOCK) | Int32(EFD_CLOEXEC))
        if wfd < 0 { throw fail(.eventLoop, "eventfd", errno) }
        fds.append(wfd)
        for fd in [lfd, wfd] {
            var ev = epoll_event()
            ev.events = ServerLoop.epollIn
            ev.data.fd = fd
            if epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0 { throw fail(.eventLoop, "epoll_ctl", errno) }
        }
        do {
            replier = try ModbusReplier()
        } catch {
            throw fail(.libmodbus, error.function, error.errno)
        }
        listenFd = lfd
        epollFd = ep
        wakeFd = wfd
        shared.control.withLock { $0.wakeFd = wfd }
        connections = Array(repeating: nil, count: Int(max(configuration.descriptorLimit, 0)))

        // Timeouts are checked on a sweep a few times per shortest timeout, not per request.
        var shortest = Int64(max(configuration.byteTimeoutMs, 1))
        if configuration.idleTimeoutMs > 0 { shortest = min(shortest, Int64(configuration.idleTimeoutMs)) }
        shortest = min(shortest, Int64(max(configuration.writeStallTimeoutMs, 1)))
        sweepIntervalNs = min(max(shortest / 8, 2), 50) * 1_000_000
    }

    private var closed = false

    deinit {
        closeDescriptors()
    }

    /// Closes every descriptor the loop owns (once).
    private func closeDescriptors() {
        if closed { return }
        closed = true
        shared.control.withLock { $0.wakeFd = -1 }
        for case let c? in connections { close(c.fd) }
        connections = []
        close(listenFd)
        close(epollFd)
        close(wakeFd)
    }

    // MARK: The loop

    func run() {
        var buffer = [epoll_event](repeating: epoll_event(), count: 64)
        now = monotonicNow()
        var nextSweep = now + sweepIntervalNs
        var stopAt: Int64 = 0
        while true {
            var wakeAt = nextSweep
            if stopAt != 0 { wakeAt = min(wakeAt, stopAt) }
            let timeoutMs = Int32(max(0, (wakeAt - now + 999_999) / 1_000_000))
            let n = buffer.withUnsafeMutableBufferPointer { epoll_wait(epollFd, $0.baseAddress, Int32($0.count), timeoutMs) }
            now = monotonicNow()
            if n < 0 && errno != EINTR {
                // Not expected; avoid a hot spin, keep serving.
                usleep(1000)
            }
            if n > 0 {
                for i in 0..<Int(n) {
                    let ev = buffer[i]
                    let fd = ev.data.fd
                    if fd == listenFd {
                        acceptClients()
                    } else if fd == wakeFd {
                        var v: UInt64 = 0
                        _ = read(wakeFd, &v, 8)
                    } else if fd >= 0, Int(fd) < connections.count, let c = connections[Int(fd)] {
                        serve(c, events: ev.events)
                    }
                }
            }
            let control = shared.control.withLock { ($0.stopRequested, $0.stopAt) }
            stopAt = control.1
            if control.0 || (stopAt != 0 && now >= stopAt) { break }
            if now >= nextSweep {
                sweep()
                nextSweep = now + sweepIntervalNs
            }
        }
        for case let c? in connections { closeConnection(c, .serverStopped) }
        commitCounters()
        // The listener is closed before anyone waiting for the stop is told.
        closeDescriptors()
        shared.finish()
    }

    private func monotonicNow() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
    }

    private func commitCounters() {
        let d = delta
        let clients = clientCount
        shared.counters.withLock { $0.add(d); $0.clients = clients }
        delta = ModbusServerCounters()
    }

    // MARK: Accept

    private func acceptClients() {
        for _ in 0..<64 {
            var storage = sockaddr_storage()
            var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let fd = withUnsafeMutableBytes(of: &storage) {
                CModbus_accept4(listenFd, $0.baseAddress, &len, Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue))
            }
            if fd < 0 {
                let e = errno
                switch e {
                case EAGAIN, EWOULDBLOCK: break
                case EINTR, ECONNABORTED, EPROTO: continue
                default:
                    // EMFILE, ENFILE, ENOBUFS, ENOMEM: the pending connection stays queued and the
                    // listener would be readable forever; pause it instead of spinning.
                    delta.acceptErrors += 1
                    pauseListener()
                    commitCounters()
                    events(.acceptFailed(errno: e))
                }
                break
            }
            let peer = PeerAddress(storage) ?? PeerAddress(bytes: [0, 0, 0, 0], port: 0)
            var refusal: ModbusRefusal?
            if fd >= configuration.descriptorLimit {
                refusal = .descriptorLimit
            } else if !configuration.allow(peer) {
                refusal = .notAllowed
            } else if clientCount >= configuration.maxClients {
                refusal = .tooManyClients
            }
            if let refusal {
                switch refusal {
                case .notAllowed: delta.refusedNotAllowed += 1
                case .tooManyClients: delta.refusedTooManyClients += 1
                case .descriptorLimit: delta.refusedDescriptorLimit += 1
                }
                commitCounters()
                events(.refused(peer, refusal))
                close(fd)
                continue
            }
            var one: Int32 = 1
            _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            var ev = epoll_event()
            ev.events = ServerLoop.epollIn
            ev.data.fd = fd
            if epoll_ctl(epollFd, EPOLL_CTL_ADD, fd, &ev) != 0 {
                close(fd)
                continue
            }
            connections[Int(fd)] = ServerConnection(fd: fd, peer: peer, now: now, events: ServerLoop.epollIn)
            clientCount += 1
            delta.accepted += 1
            commitCounters()
            events(.accepted(peer))
        }
    }

    private func pauseListener() {
        var ev = epoll_event()
        ev.events = 0
        ev.data.fd = listenFd
        _ = epoll_ctl(epollFd, EPOLL_CTL_MOD, listenFd, &ev)
        listenerPausedUntil = now + 100_000_000
    }

    // MARK: Serving one connection

    private func serve(_ c: ServerConnection, events ev: UInt32) {
        if ev & ServerLoop.epollOut != 0 {
            if !flush(c) { return }
        }
        if ev & (ServerLoop.epollIn | ServerLoop.epollErr) != 0 {
            readAndAnswer(c)
        }
    }

    private func readAndAnswer(_ c: ServerConnection) {
        let room = min(ServerLoop.readChunk, ServerConnection.inputCapacity - c.inputCount)
        var n: Int
        repeat {
            n = recv(c.fd, c.input.baseAddress! + c.inputCount, room, 0)
        } while n < 0 && errno == EINTR
        if n == 0 {
            _ = flush(c)
            if connections[Int(c.fd)] === c { closeConnection(c, .peerClosed) }
            return
        }
        if n < 0 {
            let e = errno
            if e == EAGAIN || e == EWOULDBLOCK { return }
            closeConnection(c, e == ECONNRESET ? .peerClosed : .socketError(e))
            return
        }
        c.inputCount += n
        var offset = 0
        var completed = false
        while true {
            let framing = ModbusRequestCheck.framing(UnsafeRawBufferPointer(rebasing: c.input[offset..<c.inputCount]))
            guard case .frame(let length) = framing else {
                if case .malformed(let problem) = framing {
                    delta.closedMalformed += 1
                    commitCounters()
                    _ = flush(c)
                    if connections[Int(c.fd)] === c { closeConnection(c, .malformed(problem)) }
                    return
                }
                break
            }
            let frame = UnsafeRawBufferPointer(rebasing: c.input[offset..<(offset + length)])
            offset += length
            completed = true
            if !answer(frame, on: c) { return }
        }
        let rest = c.inputCount - offset
        if offset > 0 && rest > 0 {
            (c.input.baseAddress! + offset).withMemoryRebound(to: UInt8.self, capacity: rest) { src in
                c.input.baseAddress!.copyMemory(from: src, byteCount: rest)
            }
        }
        c.inputCount = rest
        if rest == 0 {
            c.partialSince = 0
        } else if completed || c.partialSince == 0 {
            c.partialSince = now
        }
        if completed { c.lastRequest = now }
        commitCounters()
        _ = flush(c)
    }

    /// Answers one complete frame; false if the connection was closed.
    private func answer(_ frame: UnsafeRawBufferPointer, on c: ServerConnection) -> Bool {
        delta.requests += 1
        let image = shared.published.withLock { $0.image }
        let decision = ModbusRequestCheck.decide(
            frame, unit: configuration.unit,
            sizes: (image.coils.count, image.discreteInputs.count, image.holdingRegisters.count, image.inputRegisters.count))
        do {
            switch decision {
            case .read:
                if mapped !== image {
                    try replier.load(coils: image.coils, discreteInputs: image.discreteInputs,
                                     holdingRegisters: image.holdingRegisters, inputRegisters: image.inputRegisters)
                    mapped = image
                }
                // Nothing queued for this client: straight onto its socket if the kernel's send
                // queue is empty too; otherwise (or if that sends nothing) through the pair and
                // the output buffer, which keeps the order and handles partial writes.
                if c.pendingOutput == 0 {
                    do {
                        if try replier.replyDirect(to: frame, socket: c.fd) {
                            delta.readsAnswered += 1
                            delta.readsSentDirect += 1
                            return true
                        }
                    } catch where error.errno == EPIPE || error.errno == ECONNRESET {
                        closeConnection(c, .peerClosed)
                        return false
                    }
                }
                try replier.reply(to: frame, into: &c.output)
                delta.readsAnswered += 1
            case .exception(let code):
                try replier.replyException(to: frame, code: code, into: &c.output)
                delta.countException(code)
            case .writeRejected(let code, let function, let address, let count):
                try replier.replyException(to: frame, code: code, into: &c.output)
                delta.countException(code)
                delta.writesRejected += 1
                commitCounters()
                events(.writeRejected(peer: c.peer, unit: frame[6], function: function, address: address, count: count))
            case .close(let problem):
                delta.closedMalformed += 1
                commitCounters()
                _ = flush(c)
                if connections[Int(c.fd)] === c { closeConnection(c, .malformed(problem)) }
                return false
            }
        } catch {
            commitCounters()
            events(.replyFailed(c.peer, error))
            closeConnection(c, .socketError(error.errno))
            return false
        }
        return true
    }

    /// Sends what the client will take without blocking; keeps the rest for EPOLLOUT.
    /// False if the connection was closed.
    private func flush(_ c: ServerConnection) -> Bool {
        while c.pendingOutput > 0 {
            let n = c.output.withUnsafeBytes {
                send(c.fd, $0.baseAddress! + c.outputOffset, c.pendingOutput, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT))
            }
            if n > 0 {
                c.outputOffset += n
                c.stalledSince = 0
                continue
            }
            let e = errno
            if n < 0 && e == EINTR { continue }
            if n < 0 && (e == EAGAIN || e == EWOULDBLOCK) {
                if c.stalledSince == 0 { c.stalledSince = now }
                break
            }
            closeConnection(c, e == EPIPE || e == ECONNRESET ? .peerClosed : .socketError(e))
            return false
        }
        if c.pendingOutput == 0 {
            c.output.removeAll(keepingCapacity: true)
            c.outputOffset = 0
            c.stalledSince = 0
        } else if c.outputOffset > 16 * 1024 {
            c.output.removeFirst(c.outputOffset)
            c.outputOffset = 0
        }
        // Wait for EPOLLOUT while replies are pending; stop reading while too many are (a client
        // that does not read its replies must not make the server buffer without bound).
        var want: UInt32 = 0
        if c.pendingOutput < ServerLoop.outputHighWater { want |= ServerLoop.epollIn }
        if c.pendingOutput > 0 { want |= ServerLoop.epollOut }
        if want != c.registered {
            var ev = epoll_event()
            ev.events = want
            ev.data.fd = c.fd
            _ = epoll_ctl(epollFd, EPOLL_CTL_MOD, c.fd, &ev)
            c.registered = want
        }
        return true
    }

    private func closeConnection(_ c: ServerConnection, _ reason: ModbusCloseReason) {
        guard connections[Int(c.fd)] === c else { return }
        _ = epoll_ctl(epollFd, EPOLL_CTL_DEL, c.fd, nil)
        connections[Int(c.fd)] = nil
        clientCount -= 1
        switch reason {
        case .idleTimeout: delta.closedIdle += 1
        case .byteTimeout: delta.closedByteTimeout += 1
        case .writeStall: delta.closedWriteStall += 1
        default: break
        }
        // Counters and event first: whoever sees the connection close also sees it counted.
        commitCounters()
        events(.closed(c.peer, reason))
        close(c.fd)
    }

    // MARK: Timeouts

    private func sweep() {
        if listenerPausedUntil != 0 && now >= listenerPausedUntil {
            var ev = epoll_event()
            ev.events = ServerLoop.epollIn
            ev.data.fd = listenFd
            _ = epoll_ctl(epollFd, EPOLL_CTL_MOD, listenFd, &ev)
            listenerPausedUntil = 0
        }
        let byteNs = Int64(configuration.byteTimeoutMs) * 1_000_000
        let idleNs = Int64(configuration.idleTimeoutMs) * 1_000_000
        let stallNs = Int64(configuration.writeStallTimeoutMs) * 1_000_000
        for case let c? in connections {
            if c.partialSince != 0 && now - c.partialSince > byteNs {
                closeConnection(c, .byteTimeout)
            } else if c.stalledSince != 0 && now - c.stalledSince > stallNs {
                closeConnection(c, .writeStall)
            } else if idleNs > 0 && c.pendingOutput == 0 && now - c.lastRequest > idleNs {
                closeConnection(c, .idleTimeout)
            }
        }
    }
}

/// An IPv4 or IPv6 socket address built from a literal.
struct SocketAddress {
    private var storage = sockaddr_storage()
    let family: Int32
    let length: socklen_t

    init?(host: String, port: Int) {
        guard (0...65535).contains(port) else { return nil }
        var h = host
        if h.hasPrefix("[") && h.hasSuffix("]") { h = String(h.dropFirst().dropLast()) }
        var s = sockaddr_storage()
        var sin = sockaddr_in()
        if inet_pton(AF_INET, h, &sin.sin_addr) == 1 {
            sin.sin_family = sa_family_t(AF_INET)
            sin.sin_port = UInt16(port).bigEndian
            withUnsafeMutableBytes(of: &s) { $0.storeBytes(of: sin, as: sockaddr_in.self) }
            family = AF_INET
            length = socklen_t(MemoryLayout<sockaddr_in>.size)
        } else {
            var sin6 = sockaddr_in6()
            if inet_pton(AF_INET6, h, &sin6.sin6_addr) != 1 {
                guard let resolved = SocketAddress.resolve(h) else { return nil }
                if resolved.count == 4 {
                    resolved.withUnsafeBytes { src in withUnsafeMutableBytes(of: &sin.sin_addr) { $0.copyMemory(from: src) } }
                    sin.sin_family = sa_family_t(AF_INET)
                    sin.sin_port = UInt16(port).bigEndian
                    withUnsafeMutableBytes(of: &s) { $0.storeBytes(of: sin, as: sockaddr_in.self) }
                    family = AF_INET
                    length = socklen_t(MemoryLayout<sockaddr_in>.size)
                    storage = s
                    return
                }
                resolved.withUnsafeBytes { src in withUnsafeMutableBytes(of: &sin6.sin6_addr) { $0.copyMemory(from: src) } }
            }
            sin6.sin6_family = sa_family_t(AF_INET6)
            sin6.sin6_port = UInt16(port).bigEndian
            withUnsafeMutableBytes(of: &s) { $0.storeBytes(of: sin6, as: sockaddr_in6.self) }
            family = AF_INET6
            length = socklen_t(MemoryLayout<sockaddr_in6>.size)
        }
        storage = s
    }

    /// A host name's first address (IPv4 preferred), 4 or 16 bytes; nil if it does not resolve.
    /// Blocks for the resolver: called once, when the server is created.
    static func resolve(_ name: String) -> [UInt8]? {
        // Only what can be a host name goes to the resolver.
        guard !name.isEmpty, name.utf8.count <= 253,
              name.unicodeScalars.allSatisfy({ $0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0) || $0 == "." || $0 == "-") })
        else { return nil }
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_PASSIVE | AI_ADDRCONFIG
        var list: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(name, nil, &hints, &list) == 0, let first = list else { return nil }
        defer { freeaddrinfo(list) }
        var v6: [UInt8]?
        var p: UnsafeMutablePointer<addrinfo>? = first
        while let ai = p {
            if let sa = ai.pointee.ai_addr {
                if ai.pointee.ai_family == AF_INET {
                    let sin = UnsafeRawPointer(sa).load(as: sockaddr_in.self)
                    return withUnsafeBytes(of: sin.sin_addr) { Array($0) }
                }
                if ai.pointee.ai_family == AF_INET6, v6 == nil {
                    let sin6 = UnsafeRawPointer(sa).load(as: sockaddr_in6.self)
                    v6 = withUnsafeBytes(of: sin6.sin6_addr) { Array($0) }
                }
            }
            p = ai.pointee.ai_next
        }
        return v6
    }

    mutating func withSockaddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
        let len = length
        return withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, len) }
        }
    }
}
