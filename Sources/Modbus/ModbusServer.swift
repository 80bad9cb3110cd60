import CLinux
import Platform
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The project's one Modbus/TCP server: a hardened, non-blocking epoll loop on its own thread
/// owns the listening sockets, every client socket and their frame buffers; what it answers is
/// its `ModbusServerPolicy` (a read-only image for the interlock, a delegate for the simulator).
///
/// Why not the stock libmodbus loop (`select` + `modbus_receive` + `modbus_reply`): in 3.1.6
/// `modbus_receive` blocks on one socket until its frame is complete (one slow client stalls
/// everyone), `modbus_reply` sleeps 0.5 s on a bad quantity or unknown function, protocol id
/// and length are not checked, every unit id is answered, and `select()` aborts the process on
/// a descriptor ≥ 1024. Here the loop reads whatever bytes are there, frames them itself
/// (`ModbusRequestCheck`, the only framer), closes slow, idle and malformed clients, and only
/// then lets libmodbus build the answer (`ModbusReplier`: `modbus_reply`/`modbus_reply_exception`).
///
/// With `.readOnly`, each request is answered from one `ModbusImage`, read under a lock held for
/// one reference load; `publish` swaps the image the same way. Writes never change anything:
/// they get exception 1 and are reported as events.
public final class ModbusServer: Sendable {
    /// How the server listens and whom it serves.
    public struct Configuration: Sendable {
        /// IPv4 or IPv6 literal (`0.0.0.0`, `::`, `127.0.0.1`) or a host name, resolved once at
        /// start (its first IPv4 address, else its first IPv6 address).
        public var host: String
        /// TCP port; 0 picks a free one (read it back from `port`).
        public var port: Int
        /// The unit id answered by `.readOnly`, besides 0 and 255 (the Modbus/TCP "this device").
        /// A `.delegate` policy sees every unit id and decides itself.
        public var unit: UInt8
        /// Connections at once per listener; more are accepted and closed at once.
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
        /// Runs first on the server's thread (the appliance raises its priority there).
        public var threadStart: (@Sendable () -> Void)?

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

    /// The port actually bound by the first listener (useful with `port: 0`).
    public let port: Int
    /// `host:port` as bound, for messages.
    public let address: String
    let shared: SharedServerState
    private let pending: Mutex<ServerLoop?>

    /// Binds and listens at once (so a bad address or a taken port fails here, and `port` is
    /// known), but serves nothing until `start()`.
    public init(configuration: Configuration, policy: ModbusServerPolicy,
                events: @escaping @Sendable (ModbusServerEvent) -> Void = { _ in }) throws(ModbusServerError) {
        let image: ModbusImage
        if case .readOnly(let first) = policy { image = first } else { image = .empty }
        let shared = SharedServerState(image: image)
        let loop = try ServerLoop(configuration: configuration, policy: policy, shared: shared, events: events)
        self.shared = shared
        self.port = loop.listeners[0].port
        self.address = Self.text(host: configuration.host, port: loop.listeners[0].port)
        self.pending = Mutex(loop)
    }

    /// A read-only server: until the first `publish`, reads are answered from `image`.
    public convenience init(configuration: Configuration, image: ModbusImage,
                            events: @escaping @Sendable (ModbusServerEvent) -> Void = { _ in }) throws(ModbusServerError) {
        try self.init(configuration: configuration, policy: .readOnly(image), events: events)
    }

    static func text(host: String, port: Int) -> String {
        host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }

    /// Opens one more listener on the configured host (port 0: any free port), before `start()`.
    /// Returns its index (as `ModbusRequest.listener` names it) and the port it got.
    public func addListener(port: Int) throws(ModbusServerError) -> (listener: Int, port: Int) {
        let result = pending.withLock { loop -> Result<(Int, Int), ModbusServerError> in
            guard let loop else {
                return .failure(ModbusServerError(kind: .state, function: "addListener", errno: 0, address: address))
            }
            do throws(ModbusServerError) {
                return .success(try loop.addListener(port: port))
            } catch {
                return .failure(error)
            }
        }
        return try result.get()
    }

    /// Starts the loop thread.
    public func start() throws(ModbusServerError) {
        guard let loop = pending.withLock({ $0.take() }) else {
            throw ModbusServerError(kind: .state, function: "start", errno: 0, address: address)
        }
        let name = loop.configuration.threadName
        let box = LoopThreadBox(loop)
        let thread: OSThread
        do {
            let setup = loop.configuration.threadStart
            thread = try OSThread(name: name) {
                setup?()
                box.take().run()
            }
        } catch {
            throw ModbusServerError(kind: .eventLoop, function: "pthread_create", errno: error.errno.rawValue, address: address)
        }
        shared.control.withLock { $0.thread = thread }
    }

    /// Makes a `.delegate` policy's `serverWoken` run on the loop thread (soon, once per batch
    /// of wake-ups): post commands somewhere the delegate reads, then call this.
    public func wake() {
        shared.wake()
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

    /// The image requests are answered from now (`.readOnly`).
    public var image: ModbusImage { shared.published.withLock { $0.image } }

    /// A snapshot of the counters.
    public func counters() -> ModbusServerCounters {
        var c = shared.counters.withLock { $0 }
        c.publishes = shared.published.withLock { $0.count }
        return c
    }

    /// Asks the loop to close every client and the listeners and end; returns at once.
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
        let at = monotonicNowNs() + Int64(ms) * 1_000_000
        shared.control.withLock { c in
            if c.stopAt == 0 || at < c.stopAt { c.stopAt = at }
        }
        shared.wake()
    }

    /// Blocks the calling thread until the loop thread has ended (after `stop()`). Not for the
    /// Swift concurrency pool: use `waitUntilStopped()` there.
    public func join() {
        let thread: OSThread? = shared.control.withLock { c in
            defer { c.thread = nil }
            return c.thread
        }
        thread?.join()
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
        let thread: OSThread? = shared.control.withLock { c in
            defer { c.thread = nil }
            return c.thread
        }
        thread?.join()
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
        var thread: OSThread?
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

/// Hands the loop object to its thread exactly once (the loop is confined to that thread).
private final class LoopThreadBox: @unchecked Sendable {
    private var loop: ServerLoop?
    init(_ loop: ServerLoop) { self.loop = loop }
    func take() -> ServerLoop { loop.take()! }
}
