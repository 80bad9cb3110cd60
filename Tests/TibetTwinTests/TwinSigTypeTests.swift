import Testing
@testable import TibetTwin

/// A `sig` that is not a string is a wrong type on a device without `twin_key` too (issue 17):
/// it used to be accepted whatever its type.
@Suite struct TwinSigTypeTests {
    let parser = TwinFixtures.parser()

    func parse(_ s: String) -> TwinLineOutcome { parser.parse(Array(s.utf8), received: TwinFixtures.received) }

    @Test(arguments: ["5", "null", "true", "{}", "[\"AAAA\"]"])
    func aNonStringSigIsDroppedOnAnUnsignedDevice(_ sig: String) {
        let line = TwinFixtures.line(device: "crane-01").dropLast() + #","sig":"# + sig + "}"
        guard case .dropped(let drop) = parse(String(line)) else {
            Issue.record("not dropped: \(parse(String(line)))")
            return
        }
        #expect(drop.reason == .wrongType)
        #expect(drop.device == "crane-01")
        #expect(drop.detail == "sig: expected a string (the base64 Ed25519 signature)")
    }

    @Test func aNonStringSigOnAKeyedDeviceStaysAnIdentityFailure() {
        let line = TwinFixtures.line(device: "crane-02").dropLast() + #","sig":5}"#
        #expect(parse(String(line)).reason == .badSignature)
    }

    @Test func aStringSigOnAnUnsignedDeviceIsStillIgnored() {
        let line = TwinFixtures.line(device: "crane-01").dropLast() + #","sig":"anything"}"#
        #expect(parse(String(line)).state?.signature == .notRequired)
    }
}
