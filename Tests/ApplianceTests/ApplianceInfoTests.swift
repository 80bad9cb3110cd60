import Testing
@testable import Appliance
import TestSupport

@Suite("Appliance")
struct ApplianceInfoTests {
    @Test func versionIsSemantic() {
        let parts = ApplianceInfo.version.split(separator: "-")[0].split(separator: ".")
        #expect(parts.count == 3)
        #expect(parts.allSatisfy { Int($0) != nil })
    }
}
