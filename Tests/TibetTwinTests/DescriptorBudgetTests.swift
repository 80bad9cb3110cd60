import Testing
@testable import TibetTwin

/// The start-up descriptor budget: 1,000 PLCs on links of their own cannot fit below libmodbus's
/// select() ceiling; the same 1,000 behind 32 gateways can.
@Suite("Descriptor budget")
struct DescriptorBudgetTests {
    static func maps(_ n: Int, links: Int) -> [DeviceMap] {
        (0..<n).map { i in
            DeviceMap(device: "meter-\(i)", profile: .port,
                      plc: PLCEndpoint(host: "10.0.0.1", port: 1502 + i % links, unit: 1 + i / links),
                      limits: Limits(maxDriftMs: 200, rearmMs: 100), status: nil, registers: [],
                      intents: [IntentSpec(name: "run", coil: UInt16(i))])
        }
    }

    static let config = try! ApplianceConfig.parse(yaml: """
        node: n
        maps: maps/
        interlock: {listen: 127.0.0.1:502}
        twin: {feeds: [{tcp: 127.0.0.1:7502}]}
        audit: {dir: audit, key: k}
        """, file: "t.yaml")

    @Test func aThousandLinksOfTheirOwnAreRefusedWithTheNumbers() throws {
        let budget = DescriptorBudget(config: Self.config, maps: Self.maps(1000, links: 1000))
        #expect(budget.links == 1000)
        // 1000 links + interlock 1+16+2 + HTTP 1+32+3 + feed 1+32+3 + audit 3 + process 24.
        #expect(budget.total == 1000 + 19 + 36 + 36 + 3 + 24)
        let refusal = try #require(budget.refusal(limit: 1024))
        #expect(refusal.contains("can hold 1118 descriptors"), "\(refusal)")
        #expect(refusal.contains("PLC links 1000 (1000 devices on 1000 links"), "\(refusal)")
        #expect(refusal.contains("at most 906 PLC links fit"), "\(refusal)")
        #expect(refusal.contains("gateway"), "\(refusal)")
    }

    @Test func aThousandDevicesBehind32GatewaysFit() {
        let budget = DescriptorBudget(config: Self.config, maps: Self.maps(1000, links: 32))
        #expect(budget.links == 32)
        #expect(budget.refusal(limit: 1024) == nil)
        #expect(budget.refusal(limit: budget.total) == nil)
        #expect(budget.refusal(limit: budget.total - 1) != nil, "the limit is exact")
    }
}
