import Testing
@testable import Modbus
import TestSupport

/// An MBAP frame: tid 0x1234, the given protocol id and unit, the PDU, and a length field that
/// is right unless `length` overrides it.
func mbap(unit: UInt8 = 1, pid: UInt16 = 0, length: Int? = nil, tid: UInt16 = 0x1234, _ pdu: [UInt8]) -> [UInt8] {
    let len = length ?? pdu.count + 1
    return [UInt8(tid >> 8), UInt8(tid & 0xFF), UInt8(pid >> 8), UInt8(pid & 0xFF),
            UInt8(len >> 8 & 0xFF), UInt8(len & 0xFF), unit] + pdu
}

/// A read PDU: function, address, quantity.
func readPDU(_ fc: UInt8, _ address: Int, _ count: Int) -> [UInt8] {
    [fc, UInt8(address >> 8 & 0xFF), UInt8(address & 0xFF), UInt8(count >> 8 & 0xFF), UInt8(count & 0xFF)]
}

@Suite("Modbus request check")
struct ModbusRequestCheckTests {
    let sizes = (coils: 17, discrete: 17, holding: 32, input: 32)

    func decide(_ frame: [UInt8], unit: UInt8 = 1) -> ModbusRequestDecision {
        frame.withUnsafeBytes { ModbusRequestCheck.decide($0, unit: unit, sizes: sizes) }
    }

    func framing(_ bytes: [UInt8]) -> ModbusRequestCheck.Framing {
        bytes.withUnsafeBytes { ModbusRequestCheck.framing($0) }
    }

    @Test func framesByTheMBAPLength() {
        let f = mbap(readPDU(1, 0, 8))
        #expect(framing(f) == .frame(12))
        #expect(framing(f + [0, 1, 2]) == .frame(12))
        #expect(framing(Array(f.prefix(11))) == .incomplete)
        #expect(framing(Array(f.prefix(5))) == .incomplete)
        #expect(framing([]) == .incomplete)
    }

    @Test(arguments: [0, 1, 255, 300, 65535])
    func badLengthIsMalformedAtOnce(_ length: Int) {
        // Judged from the first 6 bytes: no waiting for a body that may never come.
        let header = Array(mbap(length: length, readPDU(1, 0, 1)).prefix(6))
        #expect(framing(header) == .malformed(.length(length)))
    }

    @Test func protocolIdMustBeZero() {
        #expect(framing(mbap(pid: 0x1234, readPDU(1, 0, 1))) == .malformed(.protocolId(0x1234)))
        #expect(framing(Array(mbap(pid: 1, readPDU(1, 0, 1)).prefix(6))) == .malformed(.protocolId(1)))
    }

    @Test func validReadsOfEveryTable() {
        #expect(decide(mbap(readPDU(1, 0, 17))) == .read(.coil, address: 0, count: 17))
        #expect(decide(mbap(readPDU(2, 16, 1))) == .read(.discrete, address: 16, count: 1))
        #expect(decide(mbap(readPDU(3, 0, 32))) == .read(.holding, address: 0, count: 32))
        #expect(decide(mbap(readPDU(4, 31, 1))) == .read(.input, address: 31, count: 1))
    }

    @Test(arguments: [
        (UInt8(1), 0, 0, UInt8(3)),       // quantity 0
        (1, 0, 2001, 3),                  // 2001 coils
        (2, 0, 2001, 3),
        (3, 0, 126, 3),                   // 126 registers
        (4, 0, 126, 3),
        (1, 10, 8, 2),                    // past the last coil
        (3, 0, 33, 2),                    // past the last register
        (4, 65535, 2, 2),                 // address + quantity > 65535
        (1, 65535, 1, 2),
        (3, 32, 1, 2),
    ])
    func quantityThenAddress(_ fc: UInt8, _ address: Int, _ count: Int, _ code: UInt8) {
        #expect(decide(mbap(readPDU(fc, address, count))) == .exception(code))
    }

    @Test(arguments: [UInt8(0), 7, 8, 0x11, 0x2B, 0x42, 0x18, 0x14, 0x7F])
    func unknownFunctionsAreIllegal(_ fc: UInt8) {
        #expect(decide(mbap([fc])) == .exception(1))
        #expect(decide(mbap([fc, 0, 0, 0, 1])) == .exception(1))
    }

    @Test(arguments: [UInt8(0x80), 0x81, 0x83, 0xAB, 0xFF])
    func exceptionCodesAsRequestsClose(_ fc: UInt8) {
        #expect(decide(mbap([fc, 0, 0, 0, 1])) == .close(.exceptionFunction(fc)))
    }

    @Test func writesAreRejectedWithTheirTarget() {
        #expect(decide(mbap([5, 0, 1, 0xFF, 0])) == .writeRejected(exception: 1, function: 5, address: 1, count: 1))
        #expect(decide(mbap([6, 0, 2, 0, 9])) == .writeRejected(exception: 1, function: 6, address: 2, count: 1))
        #expect(decide(mbap([15, 0, 0, 0, 3, 1, 0b101])) == .writeRejected(exception: 1, function: 15, address: 0, count: 3))
        #expect(decide(mbap([16, 0, 16, 0, 2, 4, 0, 1, 0, 2])) == .writeRejected(exception: 1, function: 16, address: 16, count: 2))
        #expect(decide(mbap([22, 0, 3, 0xFF, 0xFF, 0, 0])) == .writeRejected(exception: 1, function: 22, address: 3, count: 1))
        #expect(decide(mbap([23, 0, 0, 0, 1, 0, 7, 0, 1, 2, 0, 5])) == .writeRejected(exception: 1, function: 23, address: 7, count: 1))
        // Byte count ≠ 2 × quantity, truncated PDUs: still a write, still exception 1.
        #expect(decide(mbap([16, 0, 0, 0, 2, 3, 0, 1, 0])) == .writeRejected(exception: 1, function: 16, address: 0, count: 2))
        #expect(decide(mbap([16])) == .writeRejected(exception: 1, function: 16, address: nil, count: nil))
        #expect(decide(mbap([5, 0])) == .writeRejected(exception: 1, function: 5, address: nil, count: nil))
    }

    @Test func unitIds() {
        #expect(decide(mbap(unit: 0, readPDU(1, 0, 1))) == .read(.coil, address: 0, count: 1))
        #expect(decide(mbap(unit: 255, readPDU(1, 0, 1))) == .read(.coil, address: 0, count: 1))
        #expect(decide(mbap(unit: 7, readPDU(1, 0, 1)), unit: 7) == .read(.coil, address: 0, count: 1))
        #expect(decide(mbap(unit: 2, readPDU(1, 0, 1))) == .exception(0x0B))
        #expect(decide(mbap(unit: 2, [0x11])) == .exception(0x0B))
        #expect(decide(mbap(unit: 2, [6, 0, 1, 0, 1])) == .writeRejected(exception: 0x0B, function: 6, address: 1, count: 1))
    }

    @Test func readWithAWrongPDULengthCloses() {
        #expect(decide(mbap(readPDU(1, 0, 1) + [0, 0])) == .close(.pduLength(function: 1, expected: 5, got: 7)))
        #expect(decide(mbap([3, 0, 0])) == .close(.pduLength(function: 3, expected: 5, got: 3)))
    }
}
