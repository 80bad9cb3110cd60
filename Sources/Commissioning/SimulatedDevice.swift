import Appliance
import Dispatch
import Modbus
import Platform
import Synchronization
import TibetTwin

#if canImport(Glibc)
import Glibc
#endif

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
        var all: [RegisterSpec] = (map.status.map { [$0.register] } ?? []) + map.identity.map(\.register) + map.registers
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
        if let status = map.status { specs["status"] = status.register }
        for id in map.identity { specs[id.register.name] = id.register }
        for r in map.registers { specs[r.name] = r }
        if let clock = map.clock { specs[clock.register.name] = clock.register }
        // Starting values: operational status, identity as expected, the rest 0.
        if let status = map.status {
            let operational = status.values.first { $0.value == "operational" }?.key ?? status.values.keys.min() ?? 0
            write(.int(operational), as: status.register)
        }
        for id in map.identity { write(id.expect, as: id.register) }
    }

    func has(_ name: String) -> Bool { specs[name] != nil }

    /// How this device answers a request addressed to it: its forced exception, exception 2
    /// for uncovered addresses in strict mode, else from its mapping.
    func action(for request: ModbusRequest) -> ModbusServerAction {
        if let code = exception { return .exception(code) }
        tickClock()
        if strict, let t = request.table {
            if !covers(table: Self.registerTable(t), address: Int(request.address), count: Int(request.quantity)) {
                return .exception(2)
            }
        }
        return .reply(mapping)
    }

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
        guard let status = map.status else {
            throw SimulatorError("\(map.device) has no status register (its status is derived from the poll)")
        }
        let spec = status.register
        if let code = status.values.first(where: { $0.value == text })?.key {
            write(.int(code), as: spec)
        } else if let code = Int64(text) {
            write(.int(code), as: spec)  // unmapped codes allowed: they test bad_decode
        } else {
            throw SimulatorError("\(map.device): unknown status \(text) (expected one of: "
                + status.values.sorted { $0.key < $1.key }.map { $0.value }.joined(separator: ", ") + ", or a code)")
        }
    }

    /// The value as a PLC client would decode it now.
    func get(_ name: String) throws(SimulatorError) -> String {
        guard let spec = name == "status" ? map.status?.register : specs[name] else {
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
        if name == "status", let code = ReadPlan.integer(value), let n = map.status?.values[code] { return "status \(n) (\(code))" }
        return "\(name) \(value.text(precision: spec.precision))"
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
        if let byte = spec.byte {
            // Keep the register's other byte.
            let old = mapping.register(table, Int(spec.address)) ?? 0
            let new = RegisterDecoder.encode(value, as: spec)[0]
            mapping.setRegister(table, Int(spec.address), byte == .high ? (old & 0x00FF) | new : (old & 0xFF00) | new)
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
