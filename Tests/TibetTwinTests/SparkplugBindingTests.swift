import Testing
@testable import TibetTwin

/// A map's `twin: {sparkplug: …}` binding (maps/README.md), as `maps validate` checks it.
@Suite("Register maps: Sparkplug B twin binding")
struct SparkplugBindingTests {
    static func map(_ binding: String, extra: String = "") -> String {
        minimalMap() + extra + "twin:\n  sparkplug: " + binding + "\n"
    }

    @Test func aBindingIsRead() throws {
        let m = try MapLoader.parse(yaml: Self.map(
            "{group: Plant1, node: TwinServer, device: Crane01, status: State/Mode, status_codes: {0: operational, 1: fault}, values: {position_x: Axis/X/Position, load_kg: Hoist/Load}}"),
                                    file: "maps/t.yaml")
        let b = try #require(m.sparkplug)
        #expect(b.group == "Plant1" && b.node == "TwinServer" && b.device == "Crane01" && b.status == "State/Mode")
        #expect(b.statusCodes == [0: "operational", 1: "fault"])
        #expect(b.values == ["position_x": "Axis/X/Position", "load_kg": "Hoist/Load"])
        #expect(b.statusName(text: nil, number: 1) == "fault")
        #expect(b.statusName(text: nil, number: 7) == nil, "an unmapped code is no status")
        #expect(b.statusName(text: "operational", number: nil) == nil, "text when codes are expected is no status")
        let plain = SparkplugBinding(group: "g", node: "n", device: "d", status: "s", values: [:])
        #expect(plain.statusName(text: "operational", number: nil) == "operational")
    }

    @Test func unknownRegistersStatusesAndIdsAreErrorsWithTheirPlace() {
        let issues = mapIssues(Self.map(
            "{group: Plant/1, node: N, device: D, status: S, status_codes: {0: running}, values: {position_y: X}}"))
        #expect(issues.count == 3, "\(issues)")
        #expect(issues.contains { $0.contains("twin.sparkplug.group: \"Plant/1\" is not a Sparkplug id") }, "\(issues)")
        #expect(issues.contains { $0.contains("twin.sparkplug.status_codes.0: unknown status \"running\"") }, "\(issues)")
        #expect(issues.contains { $0.contains("twin.sparkplug.values.position_y: no register \"position_y\" in this map") }, "\(issues)")
        #expect(issues.allSatisfy { $0.hasPrefix("m.yaml:") })
    }

    @Test func aSignedTwinCannotBeASparkplugTwin() {
        let issues = mapIssues(Self.map("{group: G, node: N, device: D, status: S, values: {position_x: X}}", extra: "twin_key: k.pub\n"))
        #expect(issues.count == 1)
        #expect(issues.first?.contains("twin.sparkplug: a Sparkplug twin cannot sign its states") == true, "\(issues)")
    }
}
