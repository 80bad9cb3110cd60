import CModbus
import Platform

#if canImport(Glibc)
import Glibc
#endif

/// The serving end of a serial line: a device (a slave, or several units) answering Modbus RTU
/// requests, for the simulator and tests. libmodbus's RTU server answers one unit id per
/// context and sleeps on bad requests, so requests are framed here (`RTUFrame`: length from the
/// function code, CRC checked, frames with a bad CRC dropped as a real device drops them) and
/// answered through a `ModbusReplier` on a Modbus/TCP view of the same PDU.
///
/// libmodbus opens and configures the port (`modbus_new_rtu`, `modbus_connect`); nothing else
/// of its RTU backend is used. Thread confinement: not `Sendable`; one thread uses it.
public final class RTUServerPort {
    public let settings: SerialPortSettings
    private let ctx: OpaquePointer
    private let fd: Int32
    private let replier: ModbusReplier
    private var pending: [UInt8] = []
    private var lastByteNs: Int64 = 0
    /// Frames dropped for a bad CRC or an unknown function.
    public private(set) var dropped = 0

    /// Opens and configures the port. The corresponding C functions are `modbus_new_rtu` and `modbus_connect`.
    public init(settings: SerialPortSettings) throws(ModbusError) {
        self.settings = settings
        let parity = CChar(UInt8(ascii: settings.parity.rawValue.unicodeScalars.first!))
        errno = 0
        guard let c = modbus_new_rtu(settings.device, Int32(settings.baud), parity, Int32(settings.dataBits),
                                     Int32(settings.stopBits)) else {
            throw ModbusError(kind: .other, errno: errno == 0 ? EINVAL : errno, function: "modbus_new_rtu", endpoint: settings.device)
        }
        errno = 0
        if modbus_connect(c) == -1 {
            let e = errno
            modbus_free(c)
            throw ModbusError(kind: .connect, errno: e, function: "modbus_connect", endpoint: settings.device)
        }
        ctx = c
        fd = modbus_get_socket(c)
        do {
            replier = try ModbusReplier()
        } catch {
            modbus_close(c)
            modbus_free(c)
            throw error
        }
    }

    deinit {
        modbus_close(ctx)
        modbus_free(ctx)
    }

    /// The next complete request (unit id and PDU, CRC stripped), waiting at most `timeoutMs`;
    /// nil when none arrived in time. A partial frame followed by t3.5 of silence is dropped.
    public func nextRequest(timeoutMs: Int) throws(ModbusError) -> [UInt8]? {
        let deadline = monotonicNowNs() + Int64(timeoutMs) * 1_000_000
        while true {
            if let frame = takeFrame() { return frame }
            let now = monotonicNowNs()
            if !pending.isEmpty, now - lastByteNs > Int64(settings.frameSilenceUs) * 1000 * 4 {
                dropped += 1  // an incomplete frame, then silence: drop it
                pending.removeAll()
            }
            if now >= deadline { return nil }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let wait = pending.isEmpty ? (deadline - now) / 1_000_000 + 1 : 5
            let n = poll(&p, 1, Int32(clamping: wait))
            if n < 0 {
                if errno == EINTR { continue }
                throw ModbusError(kind: .connectionLost, errno: errno, function: "poll", endpoint: settings.device)
            }
            if n == 0 { continue }
            var buf = [UInt8](repeating: 0, count: 512)
            let got = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if got < 0 {
                if errno == EINTR || errno == EAGAIN { continue }
                throw ModbusError(kind: .connectionLost, errno: errno, function: "read", endpoint: settings.device)
            }
            if got == 0 { continue }
            pending += buf[..<got]
            lastByteNs = monotonicNowNs()
        }
    }

    private func takeFrame() -> [UInt8]? {
        while let need = RTUFrame.requestLength(pending[...]) {
            guard need > 0 else {
                // Not a function this side knows: drop everything up to the next silence.
                dropped += 1
                pending.removeAll()
                return nil
            }
            guard pending.count >= need else { return nil }
            let frame = Array(pending[..<need])
            pending.removeFirst(need)
            if RTUFrame.crcMatches(frame) { return Array(frame.dropLast(2)) }
            dropped += 1
        }
        return nil
    }

    /// Answers `request` (unit id and PDU) from `mapping` the way `modbus_reply` does, or with
    /// exception `code`; sends the answer after the t3.5 silence.
    public func answer(_ request: [UInt8], from mapping: ModbusMapping?, exception code: UInt8?) throws(ModbusError) {
        // The same PDU as a Modbus/TCP frame: transaction 0, protocol 0, length, unit, PDU.
        let mbap: [UInt8] = [0, 0, 0, 0, UInt8(request.count >> 8), UInt8(request.count & 0xFF)] + request
        var out: [UInt8] = []
        var failure: ModbusError?
        mbap.withUnsafeBytes { b in
            do throws(ModbusError) {
                if let code = code ?? ModbusRequestCheck.replyProblem(b) {
                    try replier.replyException(to: b, code: code, into: &out)
                } else if let mapping {
                    try replier.reply(to: b, from: mapping.raw, into: &out)
                } else {
                    try replier.replyException(to: b, code: 2, into: &out)
                }
            } catch { failure = error }
        }
        if let failure { throw failure }
        guard out.count > 7 else { return }
        let frame = RTUFrame.sealed(Array(out[6...]))
        let due = lastByteNs + Int64(settings.frameSilenceUs) * 1000
        while monotonicNowNs() < due { usleep(200) }
        do throws(PartialWrite) {
            try SystemCall.writeAll(fd, frame)
        } catch {
            throw ModbusError(kind: .connectionLost, errno: error.errno.rawValue, function: "write", endpoint: settings.device)
        }
        lastByteNs = monotonicNowNs()
    }
}
