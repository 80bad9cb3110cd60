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
    }

    /// Where each map is served, in order.
    package let endpoints: [Endpoint]
    private let server: ModbusServer
    private let mailbox = SimulatorMailbox()

    /// Opens one listener per map on `host` (port `port + i` for the i-th map, or any free port
    /// when `port` is 0) and starts serving. `initial` sets values by name on every device that
    /// has them (`["load_kg": "3200"]`). `strict`: see `SimulatorCommand.Action.strict`.
    package init(maps: [DeviceMap], host: String = "127.0.0.1", port: Int = 0, initial: [String: String] = [:],
                strict: Bool = false) throws(SimulatorError) {
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
        for (i, map) in maps.enumerated() {
            let p = port == 0 ? 0 : port + i
            do {
                let (listener, bound) = try i == 0 ? (0, server.port) : server.addListener(port: p)
                let d = try SimulatedDevice(map: map, listener: listener, strict: strict)
                for (name, text) in initial where d.has(name) {
                    try d.set(name: name, text: text)
                }
                devices.append(d)
                endpoints.append(Endpoint(device: map.device, host: host, port: bound))
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
        let box = Mutex<Result<String, SimulatorError>?>(nil)
        let done = DispatchSemaphore(value: 0)
        guard !mailbox.isFinished else { throw SimulatorError("the simulator has stopped") }
        mailbox.post(command) { r in box.withLock { $0 = r }; done.signal() }
        server.wake()
        while done.wait(timeout: .now() + .milliseconds(200)) == .timedOut {
            if mailbox.isFinished { break }
        }
        if case .quit = command.action { stop() }  // returns once the server thread has ended
        switch box.withLock({ $0 }) {
        case .success(let s)?: return s
        case .failure(let e)?: throw e
        case nil: throw SimulatorError("the simulator has stopped")
        }
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

/// One served device: its map, its mapping, its modes. Confined to the simulator thread.
final class SimulatedDevice {
    let map: DeviceMap
    let listener: Int
    let mapping: ModbusMapping
    var strict: Bool
    var exception: UInt8?
    /// A clock register value set by command; nil: the clock register follows the wall clock.
    var frozenClock: Value?
    /// Addresses some map entry covers, per table (for strict mode).
    private var covered: [RegisterTable: Set<Int>] = [:]
    private var specs: [String: RegisterSpec] = [:]

    init(map: DeviceMap, listener: Int, strict: Bool) throws(SimulatorError) {
        self.map = map
        self.listener = listener
        self.strict = strict
        var all: [RegisterSpec] = [map.status.register] + map.identity.map(\.register) + map.registers
        if let clock = map.clock { all.append(clock.register) }
        var ranges: [RegisterTable: Range<Int>] = [:]
        for s in all {
            let r = Int(s.address)..<(s.lastAddress + 1)
            ranges[s.table] = ranges[s.table].map { min($0.lowerBound, r.lowerBound)..<max($0.upperBound, r.upperBound) } ?? r
            covered[s.table, default: []].formUnion(r)
        }
        do {
            mapping = try ModbusMapping(coils: ranges[.coil] ?? 0..<0, discrete: ranges[.discrete] ?? 0..<0,
                                        holding: ranges[.holding] ?? 0..<0, input: ranges[.input] ?? 0..<0)
        } catch {
            throw SimulatorError("\(map.device): cannot allocate the register mapping: \(error)")
        }
        specs["status"] = map.status.register
        for id in map.identity { specs[id.register.name] = id.register }
        for r in map.registers { specs[r.name] = r }
        if let clock = map.clock { specs[clock.register.name] = clock.register }
        // Starting values: operational status, identity as expected, the rest 0.
        let operational = map.status.values.first { $0.value == "operational" }?.key ?? map.status.values.keys.min() ?? 0
        write(.int(operational), as: map.status.register)
        for id in map.identity { write(id.expect, as: id.register) }
    }

    func has(_ name: String) -> Bool { specs[name] != nil }

    /// Sets a value from its text: numbers for numeric types, true/false/on/off/1/0 for bits,
    /// any text for strings; `status` takes a status name or code.
    func set(name: String, text: String) throws(SimulatorError) {
        if name == "status" { return try setStatus(text) }
        guard let spec = specs[name] else {
            throw SimulatorError("\(map.device) has no value named \(name) (it has: \(specs.keys.sorted().joined(separator: ", ")))")
        }
        if let clock = map.clock, spec == clock.register {
            // `set clock now` lets it follow the wall clock again.
            frozenClock = text == "now" ? nil : try Self.parse(text, for: spec)
            tickClock()
            return
        }
        write(try Self.parse(text, for: spec), as: spec)
    }

    /// Writes the wall clock (in the map's unit) into the clock register, unless it was frozen.
    func tickClock() {
        guard let clock = map.clock else { return }
        if let frozen = frozenClock { return write(frozen, as: clock.register) }
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        let ns = Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
        let v = ns / clock.unit.nanoseconds
        write(clock.register.type == .float64 ? .double(Double(ns) / Double(clock.unit.nanoseconds)) : .int(v),
              as: clock.register)
    }

    func setStatus(_ text: String) throws(SimulatorError) {
        let spec = map.status.register
        if let code = map.status.values.first(where: { $0.value == text })?.key {
            write(.int(code), as: spec)
        } else if let code = Int64(text) {
            write(.int(code), as: spec)  // unmapped codes allowed: they test bad_decode
        } else {
            throw SimulatorError("\(map.device): unknown status \(text) (expected one of: "
                + map.status.values.sorted { $0.key < $1.key }.map { $0.value }.joined(separator: ", ") + ", or a code)")
        }
    }

    /// The value as a PLC client would decode it now.
    func get(_ name: String) throws(SimulatorError) -> String {
        guard let spec = name == "status" ? map.status.register : specs[name] else {
            throw SimulatorError("\(map.device) has no value named \(name)")
        }
        let value: Value
        if spec.table.isBitTable {
            value = .bool(mapping.bit(Self.modbusTable(spec.table), Int(spec.address)) ?? false)
        } else {
            let words = (0..<spec.width).map { mapping.register(Self.modbusTable(spec.table), Int(spec.address) + $0) ?? 0 }
            do throws(DecodeError) { value = try RegisterDecoder.decode(spec, words: words) } catch {
                throw SimulatorError("\(name): \(error)")
            }
        }
        if name == "status", let code = ReadPlan.integer(value), let n = map.status.values[code] { return "status \(n) (\(code))" }
        return "\(name) \(value)"
    }

    func write(_ value: Value, as spec: RegisterSpec) {
        let table = Self.modbusTable(spec.table)
        if spec.table.isBitTable {
            mapping.setBit(table, Int(spec.address), (value.number ?? 0) != 0)
            return
        }
        if let bit = spec.bit {
            let old = mapping.register(table, Int(spec.address)) ?? 0
            let mask = UInt16(1) << UInt16(bit)
            mapping.setRegister(table, Int(spec.address), (value.number ?? 0) != 0 ? old | mask : old & ~mask)
            return
        }
        for (k, w) in RegisterDecoder.encode(value, as: spec).enumerated() {
            mapping.setRegister(table, Int(spec.address) + k, w)
        }
    }

    /// Whether every address of a request is covered by some map entry (strict mode).
    func covers(table: RegisterTable, address: Int, count: Int) -> Bool {
        guard let set = covered[table] else { return false }
        for a in address..<(address + count) where !set.contains(a) { return false }
        return true
    }

    static func parse(_ text: String, for spec: RegisterSpec) throws(SimulatorError) -> Value {
        if spec.type == .string && spec.bit == nil && !spec.table.isBitTable { return .string(text) }
        if spec.type == .bool || spec.bit != nil || spec.table.isBitTable {
            switch text.lowercased() {
            case "1", "true", "on": return .bool(true)
            case "0", "false", "off": return .bool(false)
            default: throw SimulatorError("\(spec.name): expected true/false, on/off or 1/0, got \(text)")
            }
        }
        if !spec.isScaled {
            if let i = Int64(text) { return .int(i) }
            if let u = UInt64(text) { return .uint(u) }
        }
        guard let d = Double(text) else { throw SimulatorError("\(spec.name): expected a number, got \(text)") }
        return .double(d)
    }

    static func modbusTable(_ t: RegisterTable) -> ModbusTable {
        switch t {
        case .holding: return .holding
        case .input: return .input
        case .coil: return .coil
        case .discrete: return .discrete
        }
    }

    static func registerTable(_ t: ModbusTable) -> RegisterTable {
        switch t {
        case .holding: return .holding
        case .input: return .input
        case .coil: return .coil
        case .discrete: return .discrete
        }
    }
}

/// The server delegate: answers from the devices' mappings and applies posted commands.
/// Confined to the simulator thread.
final class SimulatorCore: ModbusServerDelegate {
    let devices: [SimulatedDevice]
    private let byListener: [Int: SimulatedDevice]
    private let mailbox: SimulatorMailbox

    init(devices: [SimulatedDevice], mailbox: SimulatorMailbox) {
        self.devices = devices
        self.byListener = Dictionary(uniqueKeysWithValues: devices.map { ($0.listener, $0) })
        self.mailbox = mailbox
    }

    func answer(_ request: ModbusRequest, server: ModbusServerControl) -> ModbusServerAction {
        guard let d = byListener[request.listener] else { return .close }
        let unit = Int(request.unit)
        if unit != d.map.plc.unit && unit != 0 && unit != 255 { return .exception(11) }
        if let code = d.exception { return .exception(code) }
        d.tickClock()
        if d.strict, let t = request.table {
            if !d.covers(table: SimulatedDevice.registerTable(t), address: Int(request.address), count: Int(request.quantity)) {
                return .exception(2)
            }
        }
        return .reply(d.mapping)
    }

    func serverWoken(_ server: ModbusServerControl) {
        for (command, reply) in mailbox.take() {
            reply(apply(command, server: server))
        }
    }

    func serverStopped() { mailbox.finish() }

    private func targets(_ target: String?) throws(SimulatorError) -> [SimulatedDevice] {
        guard let target else { return devices }
        if let n = Int(target) {
            guard n >= 1 && n <= devices.count else { throw SimulatorError("@\(n): devices are numbered 1…\(devices.count)") }
            return [devices[n - 1]]
        }
        let named = devices.filter { $0.map.device == target }
        if named.isEmpty { throw SimulatorError("@\(target): no such device (serving: \(Set(devices.map(\.map.device)).sorted().joined(separator: ", ")))") }
        return named
    }

    func apply(_ command: SimulatorCommand, server: ModbusServerControl) -> Result<String, SimulatorError> {
        do throws(SimulatorError) {
            let ds = try targets(command.target)
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
                for d in ds { server.pause(listener: d.listener, untilMonotonicNs: until) }
                return .success("ok stall \(ms)")
            case .drop:
                for d in ds { server.closeConnections(listener: d.listener) }
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
                server.stop()
                return .success("ok quit")
            }
        } catch {
            return .failure(error)
        }
    }
}
