import CModbus

/// How a serial line (RS-485 or RS-232) is set up for Modbus RTU: the settings integrators
/// know from the device's manual (`19200 8E1`), the RS-485 switching libmodbus offers, and
/// the timing the Modbus serial line standard asks for.
public struct SerialPortSettings: Sendable, Hashable, CustomStringConvertible {
    /// Parity, as the `N`/`E`/`O` letter of `19200 8E1`.
    public enum Parity: String, Sendable, Hashable, CaseIterable {
        case none = "N", even = "E", odd = "O"
    }

    /// Who drives RTS while sending (libmodbus's software RS-485 direction control).
    public enum RTSMode: String, Sendable, Hashable, CaseIterable {
        /// RTS high while sending (`MODBUS_RTU_RTS_UP`).
        case up
        /// RTS low while sending (`MODBUS_RTU_RTS_DOWN`).
        case down
    }

    /// The device path, e.g. `/dev/ttyUSB0`.
    public var device: String
    public var baud: Int
    public var parity: Parity
    public var dataBits: Int
    public var stopBits: Int
    /// Put the port into the kernel's RS-485 mode (`TIOCSRS485`); fails on ports without it.
    public var rs485: Bool
    /// Drive RTS around each request (software direction control); nil leaves RTS alone.
    public var rts: RTSMode?
    /// Delay between switching RTS and sending, in µs; nil keeps libmodbus's one character time.
    public var rtsDelayUs: Int?

    public init(device: String, baud: Int = 19200, parity: Parity = .even, dataBits: Int = 8, stopBits: Int = 1,
                rs485: Bool = false, rts: RTSMode? = nil, rtsDelayUs: Int? = nil) {
        self.device = device
        self.baud = baud
        self.parity = parity
        self.dataBits = dataBits
        self.stopBits = stopBits
        self.rs485 = rs485
        self.rts = rts
        self.rtsDelayUs = rtsDelayUs
    }

    /// `/dev/ttyUSB0 19200 8E1`.
    public var description: String { "\(device) \(baud) \(dataBits)\(parity.rawValue)\(stopBits)" }

    /// Bits on the wire per character: start bit, data bits, parity bit if any, stop bits.
    public var characterBits: Int { 1 + dataBits + (parity == .none ? 0 : 1) + stopBits }

    /// The silence that ends a frame (t3.5), in microseconds: 3.5 character times, and a fixed
    /// 1750 µs above 19200 baud, as the Modbus serial line standard says. libmodbus does not
    /// keep it between frames (it finds a frame's end from its length), so `ModbusClient` waits
    /// it out before each request.
    public var frameSilenceUs: Int {
        guard baud > 0 else { return 1750 }
        if baud > 19200 { return 1750 }
        return (35 * characterBits * 1_000_000 + 10 * baud - 1) / (10 * baud)
    }
}
