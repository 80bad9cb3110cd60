import CLinux
import Platform

#if canImport(Glibc)
import Glibc
#endif

/// One client connection. Confined to the loop thread.
final class ServerConnection {
    let fd: Int32
    let peer: PeerAddress
    /// The listener it came in on (index into `ServerLoop.listeners`).
    let listener: Int
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

    init(fd: Int32, peer: PeerAddress, listener: Int, now: Int64, events: UInt32) {
        self.fd = fd
        self.peer = peer
        self.listener = listener
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

/// One listening socket and what the loop does with it.
struct ServerListener {
    let fd: Int32
    let port: Int
    var clients = 0
    /// Accept paused after an accept failure (EMFILE …) until this monotonic ns; 0 = not paused.
    var acceptPausedUntil: Int64 = 0
    /// Its clients' requests are not read until this monotonic ns (a `.delegate` stall); 0 = not.
    var stalledUntil: Int64 = 0
}

/// The event loop: everything here runs on the loop thread only (the answers are in
/// ModbusServerAnswers.swift, the listening socket in ModbusServerAddress.swift).
final class ServerLoop {
    let configuration: ModbusServer.Configuration
    let shared: SharedServerState
    let events: @Sendable (ModbusServerEvent) -> Void
    private(set) var listeners: [ServerListener] = []
    private var listenerByFd: [Int32: Int] = [:]
    let epollFd: Int32
    private let wakeFd: Int32
    let replier: ModbusReplier
    var connections: [ServerConnection?]
    private var clientCount = 0
    /// The image loaded into the replier's mapping (`.readOnly`).
    var mapped: ModbusImage?
    var delta = ModbusServerCounters()
    private var acceptPauses = 0
    /// The earliest end of a listener stall; 0 when none.
    private var stallEnd: Int64 = 0
    var now: Int64 = 0
    private let sweepIntervalNs: Int64
    private let makeDelegate: (@Sendable () -> any ModbusServerDelegate)?
    /// The `.delegate` policy's delegate, made on the loop thread when it starts.
    var delegate: (any ModbusServerDelegate)?
    /// Set by `ModbusServerControl.stop()`.
    var stopRequestedByDelegate = false

    static let readChunk = 2048
    static let outputHighWater = 64 * 1024
    static let epollIn = EPOLLIN.rawValue
    static let epollOut = EPOLLOUT.rawValue
    static let epollErr = EPOLLERR.rawValue | EPOLLHUP.rawValue

    init(configuration: ModbusServer.Configuration, policy: ModbusServerPolicy, shared: SharedServerState,
         events: @escaping @Sendable (ModbusServerEvent) -> Void) throws(ModbusServerError) {
        self.configuration = configuration
        self.shared = shared
        self.events = events
        if case .delegate(let make) = policy { makeDelegate = make } else { makeDelegate = nil }
        let where_ = "\(configuration.host):\(configuration.port)"
        var fds: [Int32] = []
        func fail(_ kind: ModbusServerError.Kind, _ function: String, _ e: Int32) -> ModbusServerError {
            for fd in fds { close(fd) }
            return ModbusServerError(kind: kind, function: function, errno: e, address: where_)
        }

        let first = try openListeningSocket(host: configuration.host, port: configuration.port,
                                            descriptorLimit: configuration.descriptorLimit)
        fds.append(first.fd)
        // The loop's own descriptors.
        let ep = epoll_create1(Int32(EPOLL_CLOEXEC))
        if ep < 0 { throw fail(.eventLoop, "epoll_create1", errno) }
        fds.append(ep)
        let wfd = eventfd(0, Int32(EFD_NONBLOCK) | Int32(EFD_CLOEXEC))
        if wfd < 0 { throw fail(.eventLoop, "eventfd", errno) }
        fds.append(wfd)
        for fd in [first.fd, wfd] {
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
        epollFd = ep
        wakeFd = wfd
        listeners = [ServerListener(fd: first.fd, port: first.port)]
        listenerByFd[first.fd] = 0
        shared.control.withLock { $0.wakeFd = wfd }
        connections = Array(repeating: nil, count: Int(max(configuration.descriptorLimit, 0)))

        // Timeouts are checked on a sweep a few times per shortest timeout, not per request.
        var shortest = Int64(max(configuration.byteTimeoutMs, 1))
        if configuration.idleTimeoutMs > 0 { shortest = min(shortest, Int64(configuration.idleTimeoutMs)) }
        shortest = min(shortest, Int64(max(configuration.writeStallTimeoutMs, 1)))
        sweepIntervalNs = min(max(shortest / 8, 2), 50) * 1_000_000
    }

    /// Opens one more listener on the configured host (before the loop runs).
    func addListener(port: Int) throws(ModbusServerError) -> (Int, Int) {
        let l = try openListeningSocket(host: configuration.host, port: port, descriptorLimit: configuration.descriptorLimit)
        var ev = epoll_event()
        ev.events = ServerLoop.epollIn
        ev.data.fd = l.fd
        if epoll_ctl(epollFd, EPOLL_CTL_ADD, l.fd, &ev) != 0 {
            let e = errno
            close(l.fd)
            throw ModbusServerError(kind: .eventLoop, function: "epoll_ctl", errno: e, address: "\(configuration.host):\(port)")
        }
        listeners.append(ServerListener(fd: l.fd, port: l.port))
        listenerByFd[l.fd] = listeners.count - 1
        return (listeners.count - 1, l.port)
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
        for l in listeners { close(l.fd) }
        close(epollFd)
        close(wakeFd)
    }

    // MARK: The loop

    func run() {
        delegate = makeDelegate?()
        var buffer = [epoll_event](repeating: epoll_event(), count: 64)
        now = monotonicNowNs()
        var nextSweep = now + sweepIntervalNs
        var stopAt: Int64 = 0
        while true {
            var wakeAt = nextSweep
            if stopAt != 0 { wakeAt = min(wakeAt, stopAt) }
            if stallEnd != 0 { wakeAt = min(wakeAt, stallEnd) }
            let timeoutMs = Int32(max(0, (wakeAt - now + 999_999) / 1_000_000))
            let n = buffer.withUnsafeMutableBufferPointer { epoll_wait(epollFd, $0.baseAddress, Int32($0.count), timeoutMs) }
            now = monotonicNowNs()
            if n < 0 && errno != EINTR {
                // Not expected; avoid a hot spin, keep serving.
                usleep(1000)
            }
            if n > 0 {
                for i in 0..<Int(n) {
                    let ev = buffer[i]
                    let fd = ev.data.fd
                    if fd >= 0, Int(fd) < connections.count, let c = connections[Int(fd)] {
                        serve(c, events: ev.events)
                    } else if fd == wakeFd {
                        var v: UInt64 = 0
                        _ = read(wakeFd, &v, 8)
                        delegate?.serverWoken(ModbusServerControl(loop: self))
                    } else if let l = listenerByFd[fd] {
                        acceptClients(l)
                    }
                }
            }
            let control = shared.control.withLock { ($0.stopRequested, $0.stopAt) }
            stopAt = control.1
            if control.0 || stopRequestedByDelegate || (stopAt != 0 && now >= stopAt) { break }
            if stallEnd != 0 && now >= stallEnd { endStalls() }
            if now >= nextSweep {
                sweep()
                nextSweep = now + sweepIntervalNs
            }
        }
        for case let c? in connections { closeConnection(c, .serverStopped) }
        commitCounters()
        // The listeners are closed before anyone waiting for the stop is told.
        closeDescriptors()
        delegate?.serverStopped()
        delegate = nil
        shared.finish()
    }

    func commitCounters() {
        let d = delta
        let clients = clientCount
        shared.counters.withLock { $0.add(d); $0.clients = clients }
        delta = ModbusServerCounters()
    }

    // MARK: Accept

    private func acceptClients(_ l: Int) {
        for _ in 0..<64 {
            var storage = sockaddr_storage()
            var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let fd = withUnsafeMutableBytes(of: &storage) {
                CLinux_accept4(listeners[l].fd, $0.baseAddress, &len, Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue))
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
                    pauseAccept(l)
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
            } else if listeners[l].clients >= configuration.maxClients {
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
            // A stalled listener's new clients are not read either, until the stall ends.
            let want = listeners[l].stalledUntil == 0 ? ServerLoop.epollIn : 0
            var ev = epoll_event()
            ev.events = want
            ev.data.fd = fd
            if epoll_ctl(epollFd, EPOLL_CTL_ADD, fd, &ev) != 0 {
                close(fd)
                continue
            }
            connections[Int(fd)] = ServerConnection(fd: fd, peer: peer, listener: l, now: now, events: want)
            clientCount += 1
            listeners[l].clients += 1
            delta.accepted += 1
            commitCounters()
            events(.accepted(peer))
        }
    }

    private func pauseAccept(_ l: Int) {
        var ev = epoll_event()
        ev.events = 0
        ev.data.fd = listeners[l].fd
        _ = epoll_ctl(epollFd, EPOLL_CTL_MOD, listeners[l].fd, &ev)
        listeners[l].acceptPausedUntil = now + 100_000_000
        acceptPauses += 1
    }

    // MARK: Owner commands (`ModbusServerControl`)

    func pause(listener l: Int, until: Int64) {
        guard listeners.indices.contains(l) else { return }
        if until <= 0 && listeners[l].stalledUntil == 0 { return }
        // A time already past still ends through `endStalls` (next turn of the loop), which
        // also answers frames read before the stall.
        let at = max(until, 1)
        listeners[l].stalledUntil = at
        stallEnd = stallEnd == 0 ? at : min(stallEnd, at)
        for case let c? in connections where c.listener == l { updateInterest(c) }
    }

    /// Serves the listeners whose stall is over again, as if their clients had just sent.
    private func endStalls() {
        var next: Int64 = 0
        for l in listeners.indices where listeners[l].stalledUntil != 0 {
            if listeners[l].stalledUntil <= now {
                listeners[l].stalledUntil = 0
                for case let c? in connections where c.listener == l {
                    // Timeouts count from now: the server, not the client, held the bytes back.
                    if c.partialSince != 0 { c.partialSince = now }
                    c.lastRequest = now
                    updateInterest(c)
                    // Frames read before the stall began are answered now (late, as asked).
                    if c.inputCount > 0 { answerBuffered(c) }
                }
            } else {
                next = next == 0 ? listeners[l].stalledUntil : min(next, listeners[l].stalledUntil)
            }
        }
        stallEnd = next
    }

    func isStalled(_ c: ServerConnection) -> Bool { listeners[c.listener].stalledUntil != 0 }

    func closeConnections(listener: Int?) {
        for case let c? in connections where listener == nil || c.listener == listener {
            closeConnection(c, .closedByOwner)
        }
    }

    func connectionCount(listener: Int?) -> Int {
        guard let listener else { return clientCount }
        return listeners.indices.contains(listener) ? listeners[listener].clients : 0
    }

    func closeConnection(_ c: ServerConnection, _ reason: ModbusCloseReason) {
        guard connections[Int(c.fd)] === c else { return }
        _ = epoll_ctl(epollFd, EPOLL_CTL_DEL, c.fd, nil)
        connections[Int(c.fd)] = nil
        clientCount -= 1
        listeners[c.listener].clients -= 1
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
        if acceptPauses > 0 {
            for l in listeners.indices where listeners[l].acceptPausedUntil != 0 && now >= listeners[l].acceptPausedUntil {
                var ev = epoll_event()
                ev.events = ServerLoop.epollIn
                ev.data.fd = listeners[l].fd
                _ = epoll_ctl(epollFd, EPOLL_CTL_MOD, listeners[l].fd, &ev)
                listeners[l].acceptPausedUntil = 0
                acceptPauses -= 1
            }
        }
        let byteNs = Int64(configuration.byteTimeoutMs) * 1_000_000
        let idleNs = Int64(configuration.idleTimeoutMs) * 1_000_000
        let stallNs = Int64(configuration.writeStallTimeoutMs) * 1_000_000
        for case let c? in connections {
            let held = stallEnd != 0 && isStalled(c)  // its bytes wait in the kernel, on purpose
            if !held && c.partialSince != 0 && now - c.partialSince > byteNs {
                closeConnection(c, .byteTimeout)
            } else if c.stalledSince != 0 && now - c.stalledSince > stallNs {
                closeConnection(c, .writeStall)
            } else if !held && idleNs > 0 && c.pendingOutput == 0 && now - c.lastRequest > idleNs {
                closeConnection(c, .idleTimeout)
            }
        }
    }
}
