/// How one device is read: every register the map names (values, status, identity) grouped
/// per table into as few requests as the protocol allows (docs/register-maps.md), and how the answers turn
/// into a `PhysicalState`. Pure: the poller does the I/O and hands the raw answers back.
public struct ReadPlan: Sendable, Hashable {
    /// The most registers one read may ask for (FC 3/4).
    public static let maxRegistersPerRead = 125
    /// The most bits one read may ask for (FC 1/2).
    public static let maxBitsPerRead = 2000

    /// One register the map names, and what it is for.
    public struct Item: Sendable, Hashable {
        public enum Role: Sendable, Hashable {
            case status
            /// Index into the map's `identity`.
            case identity(Int)
            /// Index into the map's `registers`.
            case value(Int)
            /// The PLC's wall-clock register (`DeviceMap.clock`).
            case clock
        }
        public var role: Role
        public var spec: RegisterSpec
    }

    /// One read request: `count` registers (or bits) of `table` from `address`, covering `items`.
    public struct Group: Sendable, Hashable {
        public var table: RegisterTable
        public var address: UInt16
        public var count: Int
        /// Indices into the plan's `items`, by address.
        public var items: [Int]

        /// Last address read (inclusive).
        public var lastAddress: Int { Int(address) + count - 1 }
    }

    /// The map the plan reads.
    public let map: DeviceMap
    public let items: [Item]
    /// The requests of one poll, in order. Changes only by `split`.
    public private(set) var groups: [Group]
    /// How many groups were split after exception 2 (the splits are kept for this device).
    public private(set) var splits = 0

    /// Plans the reads of `map` (status, identity, values and the clock register): per table, items by address, a new request whenever the next
    /// item would push the request past the protocol limit or leave a gap wider than
    /// `plc.maxGap` registers (bit tables: `maxGap × 16` bits, the same bytes on the wire).
    public init(map: DeviceMap) {
        self.map = map
        var items: [Item] = map.status.map { [Item(role: .status, spec: $0.register)] } ?? []
        for (i, id) in map.identity.enumerated() { items.append(Item(role: .identity(i), spec: id.register)) }
        for (i, r) in map.registers.enumerated() { items.append(Item(role: .value(i), spec: r)) }
        if let clock = map.clock { items.append(Item(role: .clock, spec: clock.register)) }
        self.items = items
        var groups: [Group] = []
        for table in RegisterTable.allCases {
            let indices = items.indices.filter { items[$0].spec.table == table }
            groups += Self.group(indices, of: items, table: table, maxGap: map.plc.maxGap,
                                 limit: table.isBitTable ? map.plc.maxBits : map.plc.maxRegisters)
        }
        self.groups = groups
    }

    /// Groups the given items (all of one table) into requests.
    /// `limit` is the most registers (bits) per request: the protocol's, or the map's
    /// `max_registers` / `max_bits`.
    static func group(_ indices: [Int], of items: [Item], table: RegisterTable, maxGap: Int, limit: Int? = nil) -> [Group] {
        let limit = min(max(limit ?? .max, 1), table.isBitTable ? maxBitsPerRead : maxRegistersPerRead)
        let gap = table.isBitTable ? max(maxGap, 0) * 16 : max(maxGap, 0)
        let sorted = indices.sorted {
            (items[$0].spec.address, items[$0].spec.lastAddress, $0) < (items[$1].spec.address, items[$1].spec.lastAddress, $1)
        }
        var groups: [Group] = []
        var current: Group?
        for i in sorted {
            let s = items[i].spec
            if var g = current {
                let end = max(g.lastAddress, s.lastAddress)
                if Int(s.address) - g.lastAddress - 1 <= gap && end - Int(g.address) + 1 <= limit {
                    g.count = end - Int(g.address) + 1
                    g.items.append(i)
                    current = g
                    continue
                }
                groups.append(g)
            }
            current = Group(table: table, address: s.address, count: min(s.width, limit), items: [i])
        }
        if let current { groups.append(current) }
        return groups
    }

    /// Splits the group at `index` after it drew exception 2 (illegal data address): at its
    /// widest gap, or else in the middle of its items, so the next reads skip the addresses the
    /// PLC refuses. Returns the indices the new groups now occupy, or nil when the group reads
    /// a single item and cannot be split (that item is then really refused).
    public mutating func split(groupAt index: Int) -> Range<Int>? {
        let g = groups[index]
        guard g.items.count > 1 else { return nil }
        // Cut points: between consecutive items (by address) where the next starts after
        // everything before it ends; prefer the widest hole.
        var best: (cut: Int, hole: Int)?
        var end = items[g.items[0]].spec.lastAddress
        for k in 1..<g.items.count {
            let s = items[g.items[k]].spec
            let hole = Int(s.address) - end - 1
            if hole >= 0 {
                let mid = abs(2 * k - g.items.count)
                if best == nil || hole > best!.hole
                    || (hole == best!.hole && mid < abs(2 * best!.cut - g.items.count)) {
                    best = (k, hole)
                }
            }
            end = max(end, s.lastAddress)
        }
        guard let cut = best?.cut else { return nil }
        let parts = [Array(g.items[..<cut]), Array(g.items[cut...])].map { part -> Group in
            let first = Int(items[part[0]].spec.address)
            let last = part.map { items[$0].spec.lastAddress }.max()!
            return Group(table: g.table, address: UInt16(first), count: last - first + 1, items: part)
        }
        groups.replaceSubrange(index...index, with: parts)
        splits += 1
        return index..<(index + parts.count)
    }

    /// The raw answer to one group's request.
    public enum GroupResult: Sendable, Hashable {
        /// Registers read, starting at the group's address.
        case registers([UInt16])
        /// Bits read (one byte, 0 or 1, per bit), starting at the group's address.
        case bits([UInt8])
        /// The request failed: the quality every item of the group gets, and why.
        case failed(Quality, String)
    }

    /// Builds the device's `PhysicalState` from one poll's answers (`results[i]` answers
    /// `groups[i]`; missing results count as not read). A failed group makes its values bad with
    /// the group's quality and sets `pollError`; an unmapped status code or an undecodable
    /// value is `bad_decode`; non-finite floats are `bad_decode` (unknown is never good). The clock
    /// register, if mapped, becomes `plcWallNs`; one that does not convert sets `pollError`.
    public func state(from results: [GroupResult], at time: ClockReading) -> PhysicalState {
        var values = [String: Reading](minimumCapacity: map.registers.count)
        var status: String?
        var statusRaw: Int64?
        var statusQuality: Quality = .badComm
        var identityValues: [Value?] = Array(repeating: nil, count: map.identity.count)
        var identityFailed = false
        var plcWallNs: Int64?
        var errors: [String] = []

        // Items are read in place (no copies of their specs): this runs once per device and poll.
        items.withUnsafeBufferPointer { its in
            /// Files one item's value (nil unless good) and quality under its role.
            func record(_ ii: Int, _ decoded: Value?, _ q: Quality) {
                var quality = q
                var value = decoded
                if case .double(let d)? = value, !d.isFinite {
                    quality = .badDecode
                    errors.append("\(its[ii].spec.name): not a finite number (\(d))")
                }
                if !quality.isGood { value = nil }
                switch its[ii].role {
                case .value(let i):
                    values[map.registers[i].name] = Reading(value: value, quality: quality)
                case .identity(let i):
                    if quality.isGood { identityValues[i] = value } else { identityFailed = true }
                case .clock:
                    if let v = value {
                        plcWallNs = map.clock?.wallNs(from: v)
                        if plcWallNs == nil { errors.append("clock register \(its[ii].spec.name): \(v) is not a time") }
                    }
                case .status:
                    statusQuality = quality
                    if quality.isGood, let v = value {
                        statusRaw = Self.integer(v)
                        if let code = statusRaw, let name = map.status?.values[code] {
                            status = name
                        } else {
                            statusQuality = .badDecode
                            errors.append("status code \(v) is not in the status value map")
                        }
                    }
                }
            }

            for gi in groups.indices {
                let base = Int(groups[gi].address)
                switch gi < results.count ? results[gi] : .failed(.badComm, "not read") {
                case .failed(let q, let why):
                    // A lost connection fails every group the same way: say it once.
                    if errors.last != why { errors.append(why) }
                    for ii in groups[gi].items { record(ii, nil, q) }
                case .registers(let words):
                    for ii in groups[gi].items {
                        let off = Int(its[ii].spec.address) - base
                        let width = its[ii].spec.width
                        guard off >= 0, off + width <= words.count else {
                            errors.append("\(its[ii].spec.name): short answer")
                            record(ii, nil, .badDecode)
                            continue
                        }
                        do throws(DecodeError) {
                            record(ii, try RegisterDecoder.decode(its[ii].spec, words: words[off..<(off + width)]), .good)
                        } catch {
                            errors.append(error.description)
                            record(ii, nil, .badDecode)
                        }
                    }
                case .bits(let bits):
                    for ii in groups[gi].items {
                        let off = Int(its[ii].spec.address) - base
                        guard off >= 0, off < bits.count else {
                            errors.append("\(its[ii].spec.name): short answer")
                            record(ii, nil, .badDecode)
                            continue
                        }
                        record(ii, .bool(bits[off] != 0), .good)
                    }
                }
            }
        }

        var identity: IdentityResult = .notConfigured
        if !map.identity.isEmpty {
            if identityFailed {
                identity = .unknown
            } else {
                identity = .ok
                for (i, spec) in map.identity.enumerated() {
                    guard let got = identityValues[i] else { identity = .unknown; break }
                    if !Self.identityMatches(expected: spec.expect, got: got) {
                        identity = .mismatch(register: spec.register.name, expected: spec.expect.description,
                                             got: got.description)
                        break
                    }
                }
            }
        }
        if map.status == nil {
            // Derived: operational while the poll and every reading is good. Anything else
            // leaves the status unknown, with the first bad quality (fail-safe: never permits).
            let firstBad = values.values.first { !$0.quality.isGood }?.quality
            if errors.isEmpty && firstBad == nil && (identity == .ok || identity == .notConfigured) {
                status = "operational"
                statusQuality = .good
            } else {
                status = nil
                statusQuality = firstBad ?? .badComm
            }
        }
        return PhysicalState(device: map.device, status: status, statusRaw: statusRaw, statusQuality: statusQuality,
                             values: values, identity: identity,
                             pollError: errors.isEmpty ? nil : errors.joined(separator: "; "), time: time,
                             plcWallNs: plcWallNs, statusDerived: map.status == nil)
    }

    /// A state for a poll that never reached the PLC (not connected, connect failed): every
    /// value, the status and identity unknown, with `quality` and `why`.
    public func failedState(quality: Quality, why: String, at time: ClockReading) -> PhysicalState {
        var values: [String: Reading] = [:]
        values.reserveCapacity(map.registers.count)
        for r in map.registers { values[r.name] = Reading(value: nil, quality: quality) }
        return PhysicalState(device: map.device, status: nil, statusRaw: nil, statusQuality: quality, values: values,
                             identity: map.identity.isEmpty ? .notConfigured : .unknown, pollError: why, time: time,
                             statusDerived: map.status == nil)
    }

    /// An integral code from a decoded value (nil for fractions and strings), as the status
    /// value map is keyed.
    public static func integer(_ v: Value) -> Int64? {
        switch v {
        case .bool(let b): return b ? 1 : 0
        case .int(let i): return i
        case .uint(let u): return u <= UInt64(Int64.max) ? Int64(u) : nil
        case .double(let d): return d.rounded() == d && abs(d) < 9.2e18 ? Int64(d) : nil
        case .string: return nil
        }
    }

    /// Whether an identity register read back its expected value: integers exactly, other
    /// numbers by value, strings by text.
    public static func identityMatches(expected: Value, got: Value) -> Bool {
        switch (expected, got) {
        case (.string(let a), .string(let b)): return a == b
        case (.string, _), (_, .string): return false
        default:
            if let a = integer(expected), let b = integer(got) { return a == b }
            if case .uint(let a) = expected, case .uint(let b) = got { return a == b }
            guard let a = expected.number, let b = got.number else { return false }
            return a == b
        }
    }
}
