/// Where the interlock server puts every permit and diagnostic (docs/interlock.md), computed from the
/// loaded maps. Pure: the same maps always give the same layout, which `maps layout` prints and
/// the interlock serves.
///
/// - Coils (FC1) and discrete inputs (FC2, a mirror): one permit bit per intent at the address
///   its map gives (`intents.*.coil`). Addresses `0 ..< coilCount` can be read; an address no
///   intent claims reads 0. Beyond that is out of the layout (exception 2).
/// - Input registers (FC4) and holding registers (FC3, a mirror): 0 heartbeat, 1 health,
///   2 device count, 3…15 reserved (0), then one block of 8 registers per device k at
///   `16 + 8·k`: reason code, drift ms, physical age ms, twin age ms, permit bits of its intents
///   (bit i = the device's i-th intent in coil order), block count (low 16 bits), 2 reserved.
public struct InterlockLayout: Sendable, Hashable {
    /// One intent's permit: its coil and its bit in the device's permit-bits register.
    public struct Intent: Sendable, Hashable {
        public var name: String
        /// Address of the permit coil and of its discrete-input mirror.
        public var coil: UInt16
        /// Bit number (0 = LSB) in the device's permit-bits register.
        public var bit: Int
    }

    /// One device's place in the layout.
    public struct Device: Sendable, Hashable {
        public var name: String
        /// Position k in `maps layout` order (the order the maps were given).
        public var index: Int
        /// First register of the device's diagnostic block: `16 + 8·index`.
        public var registerBase: UInt16
        /// The device's intents in coil order; `intents[i].bit == i`.
        public var intents: [Intent]
    }

    /// Register offsets within a device block, and the fixed registers.
    public enum Register {
        public static let heartbeat: UInt16 = 0
        public static let health: UInt16 = 1
        public static let deviceCount: UInt16 = 2
        /// First register of device 0's block.
        public static let firstDeviceBlock = 16
        /// Registers per device block.
        public static let deviceBlockSize = 8
        public static let reasonCode = 0
        public static let driftMs = 1
        public static let physicalAgeMs = 2
        public static let twinAgeMs = 3
        public static let permitBits = 4
        public static let blockCount = 5
    }

    /// The value served in a reason-code register while the device has not been evaluated
    /// (at start, and during the shutdown grace period); also the value of an unknown age.
    public static let unknown: UInt16 = 0xFFFF

    /// Devices in the order given.
    public let devices: [Device]
    /// Readable coils / discrete inputs: `0 ..< coilCount` (highest claimed coil + 1).
    public let coilCount: Int
    /// Readable input / holding registers: `0 ..< registerCount` (`16 + 8 · devices`).
    public let registerCount: Int

    /// Builds the layout for `maps` in the order given (which, for `maps layout` and the
    /// appliance, is the map files sorted by name).
    ///
    /// Throws when the maps cannot share one interlock: a device named twice, a coil claimed
    /// twice, more than 16 intents in one device (its permit bits must fit one register) or more
    /// devices than the register space holds.
    public init(maps: [DeviceMap]) throws(InterlockLayoutError) {
        let maxDevices = (65536 - Register.firstDeviceBlock) / Register.deviceBlockSize
        if maps.count > maxDevices {
            throw InterlockLayoutError(kind: .tooManyDevices, device: nil, intent: nil, coil: nil,
                                       detail: "\(maps.count) devices, at most \(maxDevices) fit in the register space")
        }
        var claimed: [UInt16: (device: String, intent: String)] = [:]
        var names = Set<String>()
        var devices: [Device] = []
        var maxCoil = -1
        for (k, map) in maps.enumerated() {
            if !names.insert(map.device).inserted {
                throw InterlockLayoutError(kind: .duplicateDevice, device: map.device, intent: nil, coil: nil,
                                           detail: "device \"\(map.device)\" appears in more than one map")
            }
            if map.intents.count > 16 {
                throw InterlockLayoutError(kind: .tooManyIntents, device: map.device, intent: nil, coil: nil,
                                           detail: "\(map.intents.count) intents; at most 16 fit in the permit-bits register")
            }
            let sorted = map.intents.sorted { $0.coil < $1.coil }
            var intents: [Intent] = []
            for (i, intent) in sorted.enumerated() {
                if let first = claimed[intent.coil] {
                    throw InterlockLayoutError(
                        kind: .duplicateCoil, device: map.device, intent: intent.name, coil: intent.coil,
                        detail: "coil \(intent.coil) is claimed by \(first.device).\(first.intent) and \(map.device).\(intent.name)")
                }
                claimed[intent.coil] = (map.device, intent.name)
                intents.append(Intent(name: intent.name, coil: intent.coil, bit: i))
                maxCoil = max(maxCoil, Int(intent.coil))
            }
            devices.append(Device(name: map.device, index: k,
                                  registerBase: UInt16(Register.firstDeviceBlock + Register.deviceBlockSize * k),
                                  intents: intents))
        }
        self.devices = devices
        self.coilCount = maxCoil + 1
        self.registerCount = Register.firstDeviceBlock + Register.deviceBlockSize * devices.count
    }

    /// The device with this name, if any.
    public func device(named name: String) -> Device? {
        devices.first { $0.name == name }
    }
}

/// Why a set of maps cannot share one interlock layout.
public struct InterlockLayoutError: Error, Sendable, Hashable, CustomStringConvertible {
    public enum Kind: Sendable, Hashable {
        case duplicateDevice
        case duplicateCoil
        case tooManyIntents
        case tooManyDevices
    }

    public var kind: Kind
    public var device: String?
    public var intent: String?
    public var coil: UInt16?
    public var detail: String

    public var description: String { "interlock layout: \(detail)" }
}

// MARK: - The printable table (`tibet-twin maps layout [--csv]`)

extension InterlockLayout {
    /// One line of the address table a PLC programmer needs.
    public struct Row: Sendable, Hashable {
        /// Device name, empty for the global registers.
        public var device: String
        /// Intent name, for permit coils and discrete inputs; empty otherwise.
        public var intent: String
        public var table: RegisterTable
        /// 0-based protocol address.
        public var address: UInt16
        public var meaning: String

        /// Modicon notation: 5 digits while the address fits (`00001`, `10001`, `30001`,
        /// `40001`), 6 digits beyond (`065536`).
        public var modicon: String {
            InterlockLayout.modicon(table: table, address: address)
        }
    }

    /// Modicon notation of a 0-based address: prefix digit (0 coil, 1 discrete, 3 input,
    /// 4 holding) and the 1-based address, in 5 digits up to 9999 and 6 digits above.
    public static func modicon(table: RegisterTable, address: UInt16) -> String {
        let n = Int(address) + 1
        let width = n <= 9999 ? 4 : 5
        let digits = String(n)
        return String(table.modiconPrefix) + String(repeating: "0", count: width - digits.count) + digits
    }

    /// Every served address with a meaning: permit coils, their discrete-input mirrors, then the
    /// input registers and their holding-register mirrors (reserved registers are left out).
    public var rows: [Row] {
        var coilRows: [Row] = []
        for d in devices {
            for i in d.intents {
                coilRows.append(Row(device: d.name, intent: i.name, table: .coil, address: i.coil,
                                    meaning: "permit \(d.name).\(i.name): 1 = permit, 0 = inhibit"))
            }
        }
        coilRows.sort { $0.address < $1.address }
        var out = coilRows
        out += coilRows.map {
            Row(device: $0.device, intent: $0.intent, table: .discrete, address: $0.address,
                meaning: "mirror of coil \($0.address): " + $0.meaning)
        }
        var regs: [Row] = [
            Row(device: "", intent: "", table: .input, address: Register.heartbeat,
                meaning: "heartbeat: +1 every evaluation tick, wraps at 65535"),
            Row(device: "", intent: "", table: .input, address: Register.health,
                meaning: "guard health: 1 = running and audit writable, 0 = degraded"),
            Row(device: "", intent: "", table: .input, address: Register.deviceCount,
                meaning: "number of devices (\(devices.count))"),
        ]
        for d in devices {
            let b = d.registerBase
            let bits = d.intents.map { "bit \($0.bit) \($0.name)" }.joined(separator: ", ")
            let items: [(Int, String)] = [
                (Register.reasonCode, "reason code (0 OK, 65535 not evaluated)"),
                (Register.driftMs, "drift ms (saturates at 65534, 65535 unknown)"),
                (Register.physicalAgeMs, "physical age ms (saturates at 65534, 65535 unknown)"),
                (Register.twinAgeMs, "twin age ms (saturates at 65534, 65535 unknown)"),
                (Register.permitBits, "permit bits" + (bits.isEmpty ? " (no intents)" : ": " + bits)),
                (Register.blockCount, "block count (low 16 bits)"),
            ]
            for (offset, meaning) in items {
                regs.append(Row(device: d.name, intent: "", table: .input, address: b + UInt16(offset),
                                meaning: meaning))
            }
        }
        out += regs
        out += regs.map {
            Row(device: $0.device, intent: $0.intent, table: .holding, address: $0.address,
                meaning: "mirror of input register \($0.address): " + $0.meaning)
        }
        return out
    }

    /// The table as aligned text columns with a header, for a terminal.
    public func text() -> String {
        let header = ["DEVICE", "INTENT", "TABLE", "ADDRESS", "MODICON", "MEANING"]
        let body = rows.map { [$0.device.isEmpty ? "-" : $0.device, $0.intent.isEmpty ? "-" : $0.intent,
                               $0.table.rawValue, String($0.address), $0.modicon, $0.meaning] }
        let all = [header] + body
        var widths = [Int](repeating: 0, count: header.count)
        for line in all {
            for (i, cell) in line.enumerated() { widths[i] = max(widths[i], cell.count) }
        }
        var out = ""
        for line in all {
            var cells: [String] = []
            for (i, cell) in line.enumerated() {
                cells.append(i == line.count - 1 ? cell : cell + String(repeating: " ", count: widths[i] - cell.count))
            }
            out += cells.joined(separator: "  ") + "\n"
        }
        return out
    }

    /// The table as CSV (RFC 4180, header line, CRLF-free) for PLC tag import.
    public func csv() -> String {
        func field(_ s: String) -> String {
            if s.contains(where: { $0 == "," || $0 == "\"" || $0 == "\n" || $0 == "\r" }) {
                var q = "\""
                for c in s { q += c == "\"" ? "\"\"" : String(c) }
                return q + "\""
            }
            return s
        }
        var out = "device,intent,table,address,modicon,meaning\n"
        for r in rows {
            out += [r.device, r.intent, r.table.rawValue, String(r.address), r.modicon, r.meaning]
                .map(field).joined(separator: ",") + "\n"
        }
        return out
    }
}
