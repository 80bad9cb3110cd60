/// Modbus RTU frames, strictly (Modbus over serial line V1.02, §2.5): unit id, PDU, CRC-16/MODBUS
/// low byte first. Used where libmodbus has no backend: RTU frames on a TCP socket.
public enum RTUFrame {
    /// CRC-16/MODBUS (polynomial 0xA001 reflected, initial 0xFFFF) of `bytes`.
    public static func crc16<C: Collection>(_ bytes: C) -> UInt16 where C.Element == UInt8 {
        var crc: UInt16 = 0xFFFF
        for b in bytes {
            crc ^= UInt16(b)
            for _ in 0..<8 {
                crc = crc & 1 != 0 ? (crc >> 1) ^ 0xA001 : crc >> 1
            }
        }
        return crc
    }

    /// `bytes` followed by their CRC, low byte first.
    public static func sealed(_ bytes: [UInt8]) -> [UInt8] {
        let crc = crc16(bytes)
        return bytes + [UInt8(crc & 0xFF), UInt8(crc >> 8)]
    }

    /// Whether the last two bytes are the CRC of the rest.
    public static func crcMatches(_ frame: [UInt8]) -> Bool {
        guard frame.count >= 4 else { return false }
        let body = frame[..<(frame.count - 2)]
        let crc = crc16(body)
        return frame[frame.count - 2] == UInt8(crc & 0xFF) && frame[frame.count - 1] == UInt8(crc >> 8)
    }

    /// A read request (FC 1–4): unit, function, address, count, CRC.
    public static func readRequest(unit: UInt8, function: UInt8, address: UInt16, count: UInt16) -> [UInt8] {
        sealed([unit, function, UInt8(address >> 8), UInt8(address & 0xFF), UInt8(count >> 8), UInt8(count & 0xFF)])
    }

    /// The whole length of an answer to function `function`, from the bytes read so far (unit,
    /// function and, for reads, the byte count); nil while more bytes are needed to know it.
    /// Exception answers (function | 0x80) are 5 bytes; reads are 5 + byte count. Any other
    /// function is not a read this client sends: its length is unknown (`-1`).
    public static func answerLength(_ head: ArraySlice<UInt8>) -> Int? {
        guard head.count >= 2 else { return nil }
        let fc = head[head.startIndex + 1]
        if fc & 0x80 != 0 { return 5 }
        guard (1...4).contains(fc) else { return -1 }
        guard head.count >= 3 else { return nil }
        return 5 + Int(head[head.startIndex + 2])
    }

    /// The length of a request frame (FC 1–6, 15, 16), from the bytes read so far: the server
    /// side of the same rule; nil while more are needed, -1 for a function it does not know.
    public static func requestLength(_ head: ArraySlice<UInt8>) -> Int? {
        guard head.count >= 2 else { return nil }
        switch head[head.startIndex + 1] {
        case 1, 2, 3, 4, 5, 6: return 8
        case 15, 16:
            guard head.count >= 7 else { return nil }
            return 9 + Int(head[head.startIndex + 6])
        default: return -1
        }
    }
}
