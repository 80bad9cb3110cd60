import CModbus
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The data a Modbus server answers from: the four tables, each a contiguous block starting at
/// its own address. Owns one `modbus_mapping_t` (freed in deinit).
///
/// Thread confinement: not `Sendable`; read and change it only on the server's thread.
public final class ModbusMapping {
    let raw: UnsafeMutablePointer<modbus_mapping_t>
    /// The address blocks served, per table (empty range: the table answers exception 2).
    public let ranges: [ModbusTable: Range<Int>]

    /// Allocates the four blocks; addresses outside them answer exception 2.
    /// The corresponding C function is `modbus_mapping_new_start_address`.
    public init(coils: Range<Int> = 0..<0, discrete: Range<Int> = 0..<0, holding: Range<Int> = 0..<0,
                input: Range<Int> = 0..<0) throws(ModbusError) {
        for r in [coils, discrete, holding, input] where r.lowerBound < 0 || r.upperBound > 65536 {
            throw ModbusError(kind: .other, errno: EINVAL, function: "modbus_mapping_new_start_address")
        }
        errno = 0
        guard let m = modbus_mapping_new_start_address(
            UInt32(coils.lowerBound), UInt32(coils.count), UInt32(discrete.lowerBound), UInt32(discrete.count),
            UInt32(holding.lowerBound), UInt32(holding.count), UInt32(input.lowerBound), UInt32(input.count))
        else {
            throw ModbusError(kind: .other, errno: errno, function: "modbus_mapping_new_start_address")
        }
        raw = m
        ranges = [.coil: coils, .discrete: discrete, .holding: holding, .input: input]
    }

    deinit { modbus_mapping_free(raw) }

    /// The register at `address` of a register table, or nil outside its block.
    public func register(_ table: ModbusTable, _ address: Int) -> UInt16? {
        guard !table.isBitTable, let r = ranges[table], r.contains(address) else { return nil }
        let tab = table == .input ? raw.pointee.tab_input_registers : raw.pointee.tab_registers
        return tab?[address - r.lowerBound]
    }

    /// Sets the register at `address`; false outside the block.
    @discardableResult
    public func setRegister(_ table: ModbusTable, _ address: Int, _ value: UInt16) -> Bool {
        guard !table.isBitTable, let r = ranges[table], r.contains(address) else { return false }
        let tab = table == .input ? raw.pointee.tab_input_registers : raw.pointee.tab_registers
        guard let tab else { return false }
        tab[address - r.lowerBound] = value
        return true
    }

    /// The bit at `address` of a bit table, or nil outside its block.
    public func bit(_ table: ModbusTable, _ address: Int) -> Bool? {
        guard table.isBitTable, let r = ranges[table], r.contains(address) else { return nil }
        let tab = table == .discrete ? raw.pointee.tab_input_bits : raw.pointee.tab_bits
        return tab.map { $0[address - r.lowerBound] != 0 }
    }

    /// Sets the bit at `address`; false outside the block.
    @discardableResult
    public func setBit(_ table: ModbusTable, _ address: Int, _ value: Bool) -> Bool {
        guard table.isBitTable, let r = ranges[table], r.contains(address) else { return false }
        let tab = table == .discrete ? raw.pointee.tab_input_bits : raw.pointee.tab_bits
        guard let tab else { return false }
        tab[address - r.lowerBound] = value ? 1 : 0
        return true
    }
}

/// One complete request frame, as the server hands it to its delegate.
public struct ModbusRequest: Sendable, Hashable {
    /// Which listener (as returned by `ModbusServer.listen`) the client connected to.
    public var listener: Int
    public var transactionID: UInt16
    public var unit: UInt8
    public var function: UInt8
    /// Start address and quantity, for the read and write functions (0 otherwise).
    public var address: UInt16
    public var quantity: UInt16

    /// The table a function code reads or writes, if it is one of FC 1–6, 15, 16.
    public var table: ModbusTable? {
        switch function {
        case 1, 5, 15: return .coil
        case 2: return .discrete
        case 3, 6, 16: return .holding
        case 4: return .input
        default: return nil
        }
    }
}

/// How the server answers one request.
public enum ModbusServerAction {
    /// Answer from this mapping (libmodbus `modbus_reply`: exception 2 outside its blocks).
    case reply(ModbusMapping)
    /// Answer with this Modbus exception code.
    case exception(UInt8)
    /// Send nothing (the client will time out).
    case ignore
    /// Close the client's connection.
    case close
}

/// What a `ModbusServer` asks of the code that owns it. Called on the server's thread only.
public protocol ModbusServerDelegate: AnyObject {
    /// Decides the answer to one complete, well-formed request.
    func answer(_ request: ModbusRequest, server: ModbusServer) -> ModbusServerAction
    /// Called after another thread called `ModbusServerWaker.wake()`: apply posted commands here.
    func serverWoken(_ server: ModbusServer)
}

/// Wakes a running `ModbusServer` from any thread (a self-pipe), and asks it to stop.
public final class ModbusServerWaker: Sendable {
    /// The read end, polled by the server.
    let fd: Int32
    private let writeFD: Int32
    private let stopFlag = Mutex(false)

    init() throws(ModbusError) {
        var fds: [Int32] = [-1, -1]
        errno = 0
        if pipe(&fds) != 0 { throw ModbusError(kind: .other, errno: errno, function: "pipe") }
        for f in fds {
            _ = fcntl(f, F_SETFL, fcntl(f, F_GETFL) | O_NONBLOCK)
            _ = fcntl(f, F_SETFD, FD_CLOEXEC)
        }
        fd = fds[0]
        writeFD = fds[1]
    }

    deinit {
        Glibc.close(fd)
        Glibc.close(writeFD)
    }

    /// Makes the server call its delegate's `serverWoken` on its own thread.
    public func wake() {
        var one: UInt8 = 1
        _ = Glibc.write(writeFD, &one, 1)  // a full pipe already means "woken"
    }

    /// Makes `run` return after the current request.
    public func requestStop() {
        stopFlag.withLock { $0 = true }
        wake()
    }

    var stopRequested: Bool { stopFlag.withLock { $0 } }

    func drain() {
        var buf = [UInt8](repeating: 0, count: 64)
        while buf.withUnsafeMutableBytes({ Glibc.read(fd, $0.baseAddress, 64) }) > 0 {}
    }
}

/// A small Modbus/TCP server: listening sockets, non-blocking clients, its own MBAP framing and
/// libmodbus `modbus_reply` for the answers. Built for the PLC simulator.
///
/// Unlike the stock `select()` + `modbus_receive` loop, no client can stall the others: sockets
/// are non-blocking, frames are assembled per connection, a frame not complete within
/// `frameTimeoutMs` closes its connection, and malformed headers close it at once. Quantities
/// are checked before `modbus_reply` so libmodbus never sleeps or flushes.
///
/// Thread confinement: create it, call `listen`, then `run` on one dedicated thread; other
/// threads reach it only through `waker`.
public final class ModbusServer {
    private struct Listener {
        var fd: Int32
        var port: Int
        var pausedUntilNs: Int64 = 0
    }
    private struct Connection {
        var fd: Int32
        var listener: Int
        var buffer: [UInt8]
        var count = 0
        /// When the first byte of the pending partial frame arrived (0: no partial frame).
        var partialSinceNs: Int64 = 0
        /// Closed at the end of the current round.
        var doomed = false
    }

    /// A frame must be complete this long after its first byte, or its connection is closed.
    public let frameTimeoutMs: Int
    /// Further clients of one listener are closed at accept.
    public let maxConnectionsPerListener: Int
    /// Wakes the server from other threads.
    public let waker: ModbusServerWaker

    private let ctx: OpaquePointer
    private var listeners: [Listener] = []
    private var connections: [Connection] = []
    private var stopping = false
    private var scratch = [UInt8](repeating: 0, count: 260)

    /// Counters, readable on the server thread.
    public private(set) var requestsAnswered = 0
    public private(set) var connectionsAccepted = 0
    public private(set) var connectionsClosedForCause = 0

    /// Creates a server with no listeners yet. The libmodbus context only builds and sends
    /// replies. The corresponding C function is `modbus_new_tcp_pi`.
    public init(frameTimeoutMs: Int = 2000, maxConnectionsPerListener: Int = 32) throws(ModbusError) {
        self.frameTimeoutMs = frameTimeoutMs
        self.maxConnectionsPerListener = maxConnectionsPerListener
        waker = try ModbusServerWaker()
        errno = 0
        guard let c = modbus_new_tcp_pi("127.0.0.1", "502") else {
            throw ModbusError(kind: .other, errno: errno, function: "modbus_new_tcp_pi")
        }
        ctx = c
    }

    deinit {
        for c in connections { Glibc.close(c.fd) }
        for l in listeners { Glibc.close(l.fd) }
        modbus_set_socket(ctx, -1)
        modbus_free(ctx)
    }

    /// Opens a listening socket on `host:port` (port 0: any free port) and returns its index
    /// and the port it got.
    public func listen(host: String, port: Int) throws(ModbusError) -> (listener: Int, port: Int) {
        let endpoint = host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        func fail(_ function: String, _ e: Int32) -> ModbusError {
            ModbusError(kind: .other, errno: e, function: function, endpoint: endpoint)
        }
        var hints = addrinfo()
        hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var res: UnsafeMutablePointer<addrinfo>?
        let gai = getaddrinfo(host, String(port), &hints, &res)
        guard gai == 0, let ai = res else { throw fail("getaddrinfo", gai == EAI_SYSTEM ? errno : EINVAL) }
        defer { freeaddrinfo(res) }
        errno = 0
        let fd = Glibc.socket(ai.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
                              | Int32(SOCK_NONBLOCK.rawValue), 0)
        if fd < 0 { throw fail("socket", errno) }
        var yes: Int32 = 1
        _ = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, socklen_t(MemoryLayout<Int32>.size))
        if Glibc.bind(fd, ai.pointee.ai_addr, ai.pointee.ai_addrlen) != 0 {
            let e = errno
            Glibc.close(fd)
            throw fail("bind", e)
        }
        if Glibc.listen(fd, 128) != 0 {
            let e = errno
            Glibc.close(fd)
            throw fail("listen", e)
        }
        var ss = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = withUnsafeMutablePointer(to: &ss) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        let family = ss.ss_family
        let bound: Int = withUnsafePointer(to: &ss) { p in
            if family == sa_family_t(AF_INET6) {
                return p.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { Int(UInt16(bigEndian: $0.pointee.sin6_port)) }
            }
            return p.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { Int(UInt16(bigEndian: $0.pointee.sin_port)) }
        }
        listeners.append(Listener(fd: fd, port: bound))
        return (listeners.count - 1, bound)
    }

    /// The port of a listener.
    public func port(of listener: Int) -> Int { listeners[listener].port }

    /// Stops reading requests from `listener`'s clients until the monotonic time `untilNs`;
    /// requests that arrive meanwhile are answered late, when the pause ends.
    public func pause(listener: Int, untilMonotonicNs untilNs: Int64) {
        listeners[listener].pausedUntilNs = untilNs
    }

    /// Closes every client connection of `listener` (all listeners if nil), at the end of the
    /// current event.
    public func closeConnections(listener: Int? = nil) {
        for k in connections.indices where listener == nil || connections[k].listener == listener {
            connections[k].doomed = true
        }
    }

    /// Open client connections of `listener` (all listeners if nil).
    public func connectionCount(listener: Int? = nil) -> Int {
        connections.count { !$0.doomed && (listener == nil || $0.listener == listener) }
    }

    /// Makes `run` return after the current event (call on the server thread).
    public func stop() { stopping = true }

    /// Serves until `stop()` (from the delegate) or `waker.requestStop()` (from anywhere).
    public func run(delegate: ModbusServerDelegate) {
        var fds: [pollfd] = []
        while !stopping && !waker.stopRequested {
            let now = Self.monotonicNs()
            fds.removeAll(keepingCapacity: true)
            fds.append(pollfd(fd: waker.fd, events: Int16(POLLIN), revents: 0))
            for l in listeners { fds.append(pollfd(fd: l.fd, events: Int16(POLLIN), revents: 0)) }
            var timeoutNs: Int64 = -1
            func consider(_ deadline: Int64) {
                let d = max(deadline - now, 0)
                timeoutNs = timeoutNs < 0 ? d : min(timeoutNs, d)
            }
            for c in connections {
                let paused = listeners[c.listener].pausedUntilNs > now
                if paused { consider(listeners[c.listener].pausedUntilNs) }
                if c.partialSinceNs != 0 { consider(c.partialSinceNs + Int64(frameTimeoutMs) * 1_000_000) }
                fds.append(pollfd(fd: c.fd, events: paused ? 0 : Int16(POLLIN), revents: 0))
            }
            let timeoutMs: Int32 = timeoutNs < 0 ? 1000 : Int32(min((timeoutNs + 999_999) / 1_000_000, 1000))
            let n = Glibc.poll(&fds, nfds_t(fds.count), timeoutMs)
            if n < 0 && errno != EINTR { break }

            if fds[0].revents != 0 {
                waker.drain()
                delegate.serverWoken(self)
                if stopping || waker.stopRequested { break }
            }
            // Connections polled above keep their indices: new ones are only appended (accept,
            // below) and closed ones are only marked until the end of this round.
            let base = 1 + listeners.count
            let polled = fds.count - base
            for i in 0..<polled where !connections[i].doomed {
                let after = Self.monotonicNs()
                let rev = fds[base + i].revents
                let paused = listeners[connections[i].listener].pausedUntilNs > after
                if paused {
                    if rev & Int16(POLLERR | POLLNVAL | POLLHUP) != 0 { connections[i].doomed = true }
                    continue
                }
                if rev & Int16(POLLIN | POLLHUP | POLLERR) != 0, !receive(at: i) {
                    connections[i].doomed = true
                    continue
                }
                if !serveFrames(at: i, delegate: delegate) {
                    connections[i].doomed = true
                    continue
                }
                if connections[i].partialSinceNs != 0,
                   after - connections[i].partialSinceNs > Int64(frameTimeoutMs) * 1_000_000 {
                    connectionsClosedForCause += 1
                    connections[i].doomed = true
                }
            }
            for i in listeners.indices where fds[1 + i].revents & Int16(POLLIN) != 0 {
                acceptAll(listener: i)
            }
            if connections.contains(where: \.doomed) {
                for c in connections where c.doomed { Glibc.close(c.fd) }
                connections.removeAll { $0.doomed }
            }
        }
    }

    private func acceptAll(listener: Int) {
        while true {
            let fd = Glibc.accept(listeners[listener].fd, nil, nil)
            if fd < 0 { return }  // EAGAIN, or EMFILE: the client stays in the backlog
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            if connectionCount(listener: listener) >= maxConnectionsPerListener {
                Glibc.close(fd)
                connectionsClosedForCause += 1
                continue
            }
            var yes: Int32 = 1
            _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &yes, socklen_t(MemoryLayout<Int32>.size))
            connections.append(Connection(fd: fd, listener: listener, buffer: [UInt8](repeating: 0, count: 1024)))
            connectionsAccepted += 1
        }
    }

    /// Reads what is there; false when the connection must close.
    private func receive(at i: Int) -> Bool {
        let free = connections[i].buffer.count - connections[i].count
        if free == 0 { return true }
        let fd = connections[i].fd
        let start = connections[i].count
        let n = connections[i].buffer.withUnsafeMutableBytes { buf in
            Glibc.recv(fd, buf.baseAddress! + start, free, Int32(MSG_DONTWAIT))
        }
        if n == 0 { return false }
        if n < 0 { return errno == EAGAIN || errno == EINTR }
        if connections[i].count == 0 { connections[i].partialSinceNs = Self.monotonicNs() }
        connections[i].count += n
        return true
    }

    /// Answers every complete frame in the buffer; false when the connection must close.
    private func serveFrames(at i: Int, delegate: ModbusServerDelegate) -> Bool {
        while connections[i].count >= 7 && !connections[i].doomed {
            let protocolID = UInt16(connections[i].buffer[2]) << 8 | UInt16(connections[i].buffer[3])
            let length = Int(UInt16(connections[i].buffer[4]) << 8 | UInt16(connections[i].buffer[5]))
            guard protocolID == 0, length >= 2, length <= 254 else {
                connectionsClosedForCause += 1
                return false
            }
            let total = 6 + length
            if connections[i].count < total { break }
            let rest = connections[i].count - total
            connections[i].buffer.withUnsafeMutableBufferPointer { p in
                scratch.withUnsafeMutableBufferPointer { d in d.baseAddress!.update(from: p.baseAddress!, count: total) }
                if rest > 0 { p.baseAddress!.update(from: p.baseAddress! + total, count: rest) }
            }
            connections[i].count -= total
            connections[i].partialSinceNs = connections[i].count > 0 ? Self.monotonicNs() : 0
            if !answer(length: total, connection: i, delegate: delegate) { return false }
        }
        return true
    }

    /// Answers the frame in `scratch`.
    private func answer(length: Int, connection i: Int, delegate: ModbusServerDelegate) -> Bool {
        let b = scratch
        let function = b[7]
        let address = length >= 10 ? UInt16(b[8]) << 8 | UInt16(b[9]) : 0
        let quantity = length >= 12 ? UInt16(b[10]) << 8 | UInt16(b[11]) : 0
        var req = ModbusRequest(listener: connections[i].listener, transactionID: UInt16(b[0]) << 8 | UInt16(b[1]),
                                unit: b[6], function: function, address: address, quantity: quantity)
        if function == 5 || function == 6 { req.quantity = 1 }
        let action = delegate.answer(req, server: self)
        if connections[i].doomed { return false }
        modbus_set_socket(ctx, connections[i].fd)
        defer { modbus_set_socket(ctx, -1) }
        let rc: Int32 = b.withUnsafeBufferPointer { p in
            switch action {
            case .close:
                return -1
            case .ignore:
                return 0
            case .exception(let code):
                return modbus_reply_exception(ctx, p.baseAddress, UInt32(code))
            case .reply(let mapping):
                if let code = Self.validate(frame: p, length: length) {
                    return modbus_reply_exception(ctx, p.baseAddress, UInt32(code))
                }
                return modbus_reply(ctx, p.baseAddress, Int32(length), mapping.raw)
            }
        }
        if rc < 0 { return false }
        requestsAnswered += 1
        return true
    }

    /// Checks what `modbus_reply` would otherwise answer by sleeping and flushing (bad
    /// quantities, unknown functions). Returns the exception code to send, or nil if fine.
    static func validate(frame b: UnsafeBufferPointer<UInt8>, length: Int) -> UInt8? {
        let fc = b[7]
        func u16(_ at: Int) -> Int { Int(b[at]) << 8 | Int(b[at + 1]) }
        switch fc {
        case 1, 2:
            guard length == 12 else { return 3 }
            return (1...Int(MODBUS_MAX_READ_BITS)).contains(u16(10)) ? nil : 3
        case 3, 4:
            guard length == 12 else { return 3 }
            return (1...Int(MODBUS_MAX_READ_REGISTERS)).contains(u16(10)) ? nil : 3
        case 5, 6:
            return length == 12 ? nil : 3
        case 15:
            guard length >= 13 else { return 3 }
            let q = u16(10), bytes = Int(b[12])
            guard (1...Int(MODBUS_MAX_WRITE_BITS)).contains(q), bytes == (q + 7) / 8, length == 13 + bytes else { return 3 }
            return nil
        case 16:
            guard length >= 13 else { return 3 }
            let q = u16(10), bytes = Int(b[12])
            guard (1...Int(MODBUS_MAX_WRITE_REGISTERS)).contains(q), bytes == 2 * q, length == 13 + bytes else { return 3 }
            return nil
        default:
            return 1
        }
    }

    static func monotonicNs() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
    }
}
