import Appliance
import Dispatch
import Modbus
import Platform
import Synchronization
import TibetTwin

#if canImport(Glibc)
import Glibc
#endif

/// A problem with a simulator command or set-up, said in one line.
package struct SimulatorError: Error, Sendable, Hashable, CustomStringConvertible {
    package var message: String
    package init(_ message: String) { self.message = message }
    package var description: String { message }
}

/// One line of the simulator's stdin protocol (`set load_kg 3200`, `status fault`, `stall 500`,
/// `drop`, `strict on`, `exception 4`, `get load_kg`, `quit`), optionally aimed at one served
/// device with a leading `@DEVICE` or `@N` (1-based, in serving order); without it, the
/// command applies to every device.
package struct SimulatorCommand: Sendable, Hashable {
    package enum Action: Sendable, Hashable {
        /// Set a value (a register, identity or `status` name) from its text.
        case set(name: String, value: String)
        /// Set the status by name or code.
        case status(String)
        /// Answer nothing for this long, then answer what arrived meanwhile (late).
        case stall(ms: Int)
        /// Close every client connection.
        case drop
        /// Strict addressing: a read touching an address no map entry covers draws exception 2
        /// (like a PLC with a sparse tag table). Off: each table is one contiguous block.
        case strict(Bool)
        /// Answer every request with this exception code (nil: answer normally again).
        case exception(UInt8?)
        /// Print a value.
        case get(String)
        case quit
    }
    /// `@DEVICE` or `@N` as written, nil for all devices.
    package var target: String?
    package var action: Action

    package init(target: String? = nil, action: Action) {
        self.target = target
        self.action = action
    }

    /// Parses one line; blank lines and `#` comments give nil.
    package static func parse(_ line: String) throws(SimulatorError) -> SimulatorCommand? {
        var words = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
        if words.isEmpty || words[0].hasPrefix("#") { return nil }
        var target: String?
        if words[0].hasPrefix("@") {
            target = String(words[0].dropFirst())
            words.removeFirst()
            if target!.isEmpty || words.isEmpty { throw SimulatorError("expected a command after @DEVICE: \(line)") }
        }
        let verb = words[0].lowercased()
        let args = Array(words.dropFirst())
        func need(_ n: Int, _ usage: String) throws(SimulatorError) {
            if args.count != n { throw SimulatorError("usage: \(usage)") }
        }
        switch verb {
        case "set":
            guard args.count >= 2 else { throw SimulatorError("usage: set NAME VALUE") }
            return SimulatorCommand(target: target, action: .set(name: args[0], value: args.dropFirst().joined(separator: " ")))
        case "status":
            try need(1, "status NAME|CODE")
            return SimulatorCommand(target: target, action: .status(args[0]))
        case "stall":
            try need(1, "stall MS")
            guard let ms = Int(args[0]), ms >= 0, ms <= 3_600_000 else {
                throw SimulatorError("stall: expected milliseconds 0…3600000, got \(args[0])")
            }
            return SimulatorCommand(target: target, action: .stall(ms: ms))
        case "drop":
            try need(0, "drop")
            return SimulatorCommand(target: target, action: .drop)
        case "strict":
            try need(1, "strict on|off")
            guard let on = ["on": true, "off": false][args[0].lowercased()] else { throw SimulatorError("usage: strict on|off") }
            return SimulatorCommand(target: target, action: .strict(on))
        case "exception":
            try need(1, "exception CODE|off")
            if args[0].lowercased() == "off" { return SimulatorCommand(target: target, action: .exception(nil)) }
            guard let c = UInt8(args[0]), (1...11).contains(c) else {
                throw SimulatorError("exception: expected a code 1…11 or off, got \(args[0])")
            }
            return SimulatorCommand(target: target, action: .exception(c))
        case "get":
            try need(1, "get NAME")
            return SimulatorCommand(target: target, action: .get(args[0]))
        case "quit", "exit":
            return SimulatorCommand(target: target, action: .quit)
        default:
            throw SimulatorError("unknown command \"\(words[0])\" (expected set, status, stall, drop, strict, exception, get, quit)")
        }
    }
}

/// A PLC simulator: serves the registers of one or more maps over Modbus/TCP (libmodbus
/// replies), each map on its own listening port, with values settable while it runs.
///
/// It runs on the project's one `ModbusServer` engine (a `.delegate` policy), so it gets the
/// same protections as the interlock: a client whose frame is still incomplete 2 s after its
/// first byte is closed (slow-loris), so is one with no request for 60 s (not counted while
/// its device is stalled), malformed frames close their connection, at most 32 clients per
/// device. A `stall` holds back only the stalled devices' clients.
///
/// Starting values: the status register holds the code of `operational` (else the lowest
/// code), identity registers their `expect`, a clock register the wall clock at each request
/// (until `set clock VALUE` freezes it; `set clock now` lets it run again), every other register
/// 0 unless `initial` names it.
/// It runs on one dedicated thread; `execute` is safe from any thread and waits until the
/// command took effect.
package final class PLCSimulator: Sendable {
    /// One served device.
    package struct Endpoint: Sendable, Hashable {
        package var device: String
        package var host: String
        package var port: Int
        /// The unit id the device answers (its map's, or its place behind a shared port).
        package var unit: Int
    }

    /// Where each map is served, in order.
    package let endpoints: [Endpoint]
    private let server: ModbusServer
    private let mailbox = SimulatorMailbox()

    /// Opens one listener per map on `host` (port `port + i` for the i-th map, or any free port
    /// when `port` is 0) and starts serving. `initial` sets values by name on every device that
    /// has them (`["load_kg": "3200"]`). `strict`: see `SimulatorCommand.Action.strict`.
    ///
    /// `unitsPerPort` > 1 serves the maps as a gateway does: consecutive groups of that many
    /// devices share one listener, the k-th of a group answering unit id k + 1 (the maps' own
    /// unit ids are replaced); a request for a unit nobody answers gets exception 11 (gateway
    /// target device failed to respond). A `stall` of one of them holds back its port.
    package init(maps: [DeviceMap], host: String = "127.0.0.1", port: Int = 0, initial: [String: String] = [:],
                strict: Bool = false, unitsPerPort: Int = 1) throws(SimulatorError) {
        guard (1...247).contains(unitsPerPort) else { throw SimulatorError("units per port must be 1…247, got \(unitsPerPort)") }
        guard !maps.isEmpty else { throw SimulatorError("no maps to serve") }
        // The delegate is made on the server thread from what this init builds.
        let handoff = UncheckedHandoff<SimulatorCore>()
        let config = ModbusServer.Configuration(
            host: host, port: port, maxClients: 32, idleTimeoutMs: 60_000, byteTimeoutMs: 2000,
            descriptorLimit: PLCSimulator.descriptorCeiling(), threadName: "tt-simulator")
        let server: ModbusServer
        do {
            server = try ModbusServer(configuration: config, policy: .delegate({ handoff.take() }))
        } catch {
            throw SimulatorError("cannot listen on \(host):\(port) for \(maps[0].device): \(error)")
        }
        var endpoints: [Endpoint] = []
        var devices: [SimulatedDevice] = []
        var shared = (listener: 0, port: server.port)
        for (i, original) in maps.enumerated() {
            let slot = i / unitsPerPort
            let p = port == 0 ? 0 : port + slot
            var map = original
            if unitsPerPort > 1 { map.plc.unit = i % unitsPerPort + 1 }
            do {
                if i % unitsPerPort == 0 && i > 0 { shared = try server.addListener(port: p) }
                let (listener, bound) = shared
                let d = try SimulatedDevice(map: map, listener: listener, strict: strict)
                for (name, text) in initial where d.has(name) {
                    try d.set(name: name, text: text)
                }
                devices.append(d)
                endpoints.append(Endpoint(device: map.device, host: host, port: bound, unit: map.plc.unit))
            } catch let e as SimulatorError {
                throw e
            } catch {
                throw SimulatorError("cannot listen on \(host):\(p) for \(map.device): \(error)")
            }
        }
        for name in initial.keys where !devices.contains(where: { $0.has(name) }) {
            throw SimulatorError("--set \(name): no device has a value named \(name)")
        }
        self.endpoints = endpoints
        self.server = server
        handoff.put(SimulatorCore(devices: devices, mailbox: mailbox))
        do {
            try server.start()
        } catch {
            throw SimulatorError("\(error)")
        }
    }

    deinit { stop() }

    /// The server's descriptor limit: what this process may open (at most 65536). The 1024 of
    /// the interlock guards libmodbus's `select()`; the simulator's server never calls it, and a
    /// simulator of hundreds of devices holds a listener and a client per device.
    private static func descriptorCeiling() -> Int32 {
        var lim = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &lim) == 0 else { return 65536 }
        return Int32(min(lim.rlim_cur, 65536))
    }

    /// Runs one command line (see `SimulatorCommand`) and returns its one-line answer.
    @discardableResult
    package func execute(_ line: String) throws(SimulatorError) -> String {
        guard let command = try SimulatorCommand.parse(line) else { return "" }
        return try execute(command)
    }

    /// Runs one command and waits until it took effect.
    @discardableResult
    package func execute(_ command: SimulatorCommand) throws(SimulatorError) -> String {
        // `stop` returns once the server thread has ended.
        try mailbox.execute(command, wake: { server.wake() }, stop: { stop() })
    }

    /// Blocks until a `quit` command or `stop()`.
    package func waitUntilQuit() {
        mailbox.quit.wait()
        mailbox.quit.signal()
    }

    /// Whether a `quit` command or `stop()` ended the simulator.
    package var hasStopped: Bool { mailbox.isFinished }

    /// Stops serving, closes every socket and joins the thread.
    package func stop() {
        server.stop()
        server.join()
        // The loop finished the mailbox as it ended; if it never ran (start failed), do it here.
        if !mailbox.isFinished { mailbox.finish() }
    }
}

/// Commands posted to the simulator thread, and whether it has finished.
final class SimulatorMailbox: Sendable {
    typealias Reply = @Sendable (Result<String, SimulatorError>) -> Void
    private let pending = Mutex<[(SimulatorCommand, Reply)]>([])
    private let finished = Atomic<Bool>(false)
    let quit = DispatchSemaphore(value: 0)

    var isFinished: Bool { finished.load(ordering: .acquiring) }

    func post(_ command: SimulatorCommand, reply: @escaping Reply) {
        pending.withLock { $0.append((command, reply)) }
    }

    func take() -> [(SimulatorCommand, Reply)] {
        pending.withLock { p in
            defer { p.removeAll() }
            return p
        }
    }

    /// Posts `command`, wakes the simulator thread, and waits until the command took effect
    /// (or the simulator has stopped); after `quit`, `stop` too.
    func execute(_ command: SimulatorCommand, wake: () -> Void, stop: () -> Void) throws(SimulatorError) -> String {
        let box = Mutex<Result<String, SimulatorError>?>(nil)
        let done = DispatchSemaphore(value: 0)
        guard !isFinished else { throw SimulatorError("the simulator has stopped") }
        post(command) { r in box.withLock { $0 = r }; done.signal() }
        wake()
        while done.wait(timeout: .now() + .milliseconds(200)) == .timedOut {
            if isFinished { break }
        }
        if case .quit = command.action { stop() }
        switch box.withLock({ $0 }) {
        case .success(let s)?: return s
        case .failure(let e)?: throw e
        case nil: throw SimulatorError("the simulator has stopped")
        }
    }

    /// Marks the simulator finished, fails what is still queued, and releases `waitUntilQuit`.
    func finish() {
        finished.store(true, ordering: .releasing)
        for (_, reply) in take() { reply(.failure(SimulatorError("the simulator has stopped"))) }
        quit.signal()
    }
}

/// Hands a non-Sendable value to exactly one other thread (the creator never touches it again
/// after `put`; the server thread's `take` happens after `ModbusServer.start`).
private final class UncheckedHandoff<T>: @unchecked Sendable {
    private let lock = Mutex(())
    private var value: T?
    func put(_ v: T) { lock.withLock { _ in value = v } }
    func take() -> T {
        lock.withLock { _ in
            defer { value = nil }
            return value!
        }
    }
}

/// The server delegate: answers from the devices' mappings and applies posted commands.
/// Confined to the simulator thread.
final class SimulatorCore: ModbusServerDelegate {
    let devices: [SimulatedDevice]
    /// The devices behind each listener: one, or a gateway's units.
    private let byListener: [Int: [SimulatedDevice]]
    private let mailbox: SimulatorMailbox

    init(devices: [SimulatedDevice], mailbox: SimulatorMailbox) {
        self.devices = devices
        self.byListener = Dictionary(grouping: devices, by: \.listener)
        self.mailbox = mailbox
    }

    func answer(_ request: ModbusRequest, server: ModbusServerControl) -> ModbusServerAction {
        guard let behind = byListener[request.listener] else { return .close }
        let unit = Int(request.unit)
        if behind.count == 1 {
            let d = behind[0]
            if unit != d.map.plc.unit && unit != 0 && unit != 255 { return .exception(11) }
            return d.action(for: request)
        }
        // A gateway: the unit id picks the device; 0 and 255 name no one of several.
        guard let d = behind.first(where: { $0.map.plc.unit == unit }) else { return .exception(11) }
        return d.action(for: request)
    }

    func serverWoken(_ server: ModbusServerControl) {
        for (command, reply) in mailbox.take() {
            reply(apply(command, server: server))
        }
    }

    func serverStopped() { mailbox.finish() }

    func apply(_ command: SimulatorCommand, server: ModbusServerControl) -> Result<String, SimulatorError> {
        SimulatorCommands.apply(command, to: devices, stall: { d, until in server.pause(listener: d.listener, untilMonotonicNs: until) },
                                drop: { server.closeConnections(listener: $0.listener) }, quit: { server.stop() })
    }
}

/// How a command changes the devices, for the TCP and the serial simulator alike; what only a
/// transport can do (stall, drop, quit) it is handed.
enum SimulatorCommands {
    static func targets(_ target: String?, in devices: [SimulatedDevice]) throws(SimulatorError) -> [SimulatedDevice] {
        guard let target else { return devices }
        if let n = Int(target) {
            guard n >= 1 && n <= devices.count else { throw SimulatorError("@\(n): devices are numbered 1…\(devices.count)") }
            return [devices[n - 1]]
        }
        let named = devices.filter { $0.map.device == target }
        if named.isEmpty { throw SimulatorError("@\(target): no such device (serving: \(Set(devices.map(\.map.device)).sorted().joined(separator: ", ")))") }
        return named
    }

    static func apply(_ command: SimulatorCommand, to devices: [SimulatedDevice],
                      stall: (SimulatedDevice, Int64) throws(SimulatorError) -> Void,
                      drop: (SimulatedDevice) throws(SimulatorError) -> Void,
                      quit: () -> Void) -> Result<String, SimulatorError> {
        do throws(SimulatorError) {
            let ds = try targets(command.target, in: devices)
            switch command.action {
            case .set(let name, let value):
                let having = ds.filter { $0.has(name) || name == "status" }
                if having.isEmpty { throw SimulatorError("no device has a value named \(name)") }
                for d in having { try d.set(name: name, text: value) }
                return .success("ok set \(name) \(value)")
            case .status(let s):
                for d in ds { try d.setStatus(s) }
                return .success("ok status \(s)")
            case .stall(let ms):
                let until = monotonicNowNs() + Int64(ms) * 1_000_000
                for d in ds { try stall(d, until) }
                return .success("ok stall \(ms)")
            case .drop:
                for d in ds { try drop(d) }
                return .success("ok drop")
            case .strict(let on):
                for d in ds { d.strict = on }
                return .success("ok strict \(on ? "on" : "off")")
            case .exception(let code):
                for d in ds { d.exception = code }
                return .success("ok exception \(code.map(String.init) ?? "off")")
            case .get(let name):
                return .success(try ds.map { d throws(SimulatorError) in try d.get(name) }.joined(separator: "\n"))
            case .quit:
                quit()
                return .success("ok quit")
            }
        } catch {
            return .failure(error)
        }
    }
}
