import Dispatch
import Modbus
import Platform
import Synchronization
import TibetTwin

/// A PLC simulator on a serial line (Modbus RTU): the devices of several maps answer on one
/// port, each under its own `plc.unit`, like meters on an RS-485 bus (`simulate --serial`).
///
/// Requests for a unit no map has get no answer, as on a bus. Commands are those of
/// `PLCSimulator`; `stall MS` makes the devices silent for that long (a serial device that is
/// busy does not answer late, it does not answer), `drop` has nothing to drop and is refused.
/// It runs on one dedicated thread; `execute` is safe from any thread and waits until the
/// command took effect.
package final class SerialSimulator: Sendable {
    package let device: String
    /// The devices served, in order (name and unit).
    package let served: [(device: String, unit: Int)]
    private let mailbox = SimulatorMailbox()
    private let loop: SerialLoop
    private let thread = Mutex<OSThread?>(nil)

    /// Opens the port and starts answering. `initial` and `strict` as for `PLCSimulator`.
    package init(maps: [DeviceMap], settings: SerialPortSettings, initial: [String: String] = [:],
                 strict: Bool = false) throws(SimulatorError) {
        guard !maps.isEmpty else { throw SimulatorError("no maps to serve") }
        var units: [Int: String] = [:]
        for m in maps {
            if let other = units[m.plc.unit] {
                throw SimulatorError("\(m.device) and \(other) both use unit \(m.plc.unit): one unit id per device on a serial line")
            }
            units[m.plc.unit] = m.device
        }
        device = settings.device
        served = maps.map { ($0.device, $0.plc.unit) }
        let port: RTUServerPort
        do {
            port = try RTUServerPort(settings: settings)
        } catch {
            throw SimulatorError("cannot open \(settings.device): \(error)")
        }
        var devices: [SimulatedDevice] = []
        for (i, map) in maps.enumerated() {
            let d = try SimulatedDevice(map: map, listener: i, strict: strict)
            for (name, text) in initial where d.has(name) { try d.set(name: name, text: text) }
            devices.append(d)
        }
        for name in initial.keys where !devices.contains(where: { $0.has(name) }) {
            throw SimulatorError("--set \(name): no device has a value named \(name)")
        }
        let loop = SerialLoop(port: port, devices: devices, mailbox: mailbox)
        self.loop = loop
        do {
            let t = try OSThread(name: "tt-sim-serial") { loop.run() }
            thread.withLock { $0 = t }
        } catch {
            throw SimulatorError("cannot start the simulator thread: \(error)")
        }
    }

    deinit { stop() }

    /// Runs one command line and returns its answer.
    @discardableResult
    package func execute(_ line: String) throws(SimulatorError) -> String {
        guard let command = try SimulatorCommand.parse(line) else { return "" }
        return try execute(command)
    }

    /// Runs one command and waits until it took effect (the loop looks every 20 ms).
    @discardableResult
    package func execute(_ command: SimulatorCommand) throws(SimulatorError) -> String {
        try mailbox.execute(command, wake: {}, stop: { stop() })
    }

    package var hasStopped: Bool { mailbox.isFinished }

    /// Blocks until a `quit` command or `stop()`.
    package func waitUntilQuit() {
        mailbox.quit.wait()
        mailbox.quit.signal()
    }

    /// Stops answering, closes the port and joins the thread.
    package func stop() {
        loop.stopFlag.store(true, ordering: .releasing)
        let t = thread.withLock { t -> OSThread? in
            defer { t = nil }
            return t
        }
        t?.join()
        if !mailbox.isFinished { mailbox.finish() }
    }
}

/// The simulator thread's state: the port and the devices. `@unchecked Sendable`: all of it is
/// built before the thread starts and then used only by that thread; `stopFlag` is atomic.
private final class SerialLoop: @unchecked Sendable {
    let port: RTUServerPort
    let devices: [SimulatedDevice]
    let byUnit: [UInt8: SimulatedDevice]
    let mailbox: SimulatorMailbox
    let stopFlag = Atomic<Bool>(false)
    /// Devices made silent by `stall`, until this monotonic time.
    var silentUntil: [ObjectIdentifier: Int64] = [:]

    init(port: RTUServerPort, devices: [SimulatedDevice], mailbox: SimulatorMailbox) {
        self.port = port
        self.devices = devices
        self.byUnit = Dictionary(devices.map { (UInt8($0.map.plc.unit), $0) }, uniquingKeysWith: { a, _ in a })
        self.mailbox = mailbox
    }

    func run() {
        defer { mailbox.finish() }
        while !stopFlag.load(ordering: .acquiring) {
            for (command, reply) in mailbox.take() {
                reply(SimulatorCommands.apply(
                    command, to: devices,
                    stall: { d, until in silentUntil[ObjectIdentifier(d)] = until },
                    drop: { _ throws(SimulatorError) in throw SimulatorError("drop: a serial line has no connection to drop (use stall)") },
                    quit: { stopFlag.store(true, ordering: .releasing) }))
            }
            let request: [UInt8]?
            do throws(ModbusError) {
                request = try port.nextRequest(timeoutMs: 20)
            } catch {
                return
            }
            guard let request, request.count >= 2, let d = byUnit[request[0]] else { continue }
            if let until = silentUntil[ObjectIdentifier(d)], monotonicNowNs() < until { continue }
            let address = request.count >= 4 ? UInt16(request[2]) << 8 | UInt16(request[3]) : 0
            let quantity = request.count >= 6 ? UInt16(request[4]) << 8 | UInt16(request[5]) : 0
            let r = ModbusRequest(listener: d.listener, transactionID: 0, unit: request[0], function: request[1],
                                  address: address, quantity: request[1] == 5 || request[1] == 6 ? 1 : quantity)
            do throws(ModbusError) {
                switch d.action(for: r) {
                case .reply(let mapping): try port.answer(request, from: mapping, exception: nil)
                case .exception(let code): try port.answer(request, from: nil, exception: code)
                case .ignore, .close: break
                }
            } catch {
                return
            }
        }
    }
}
