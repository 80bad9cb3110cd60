import Foundation
import Testing
import TestSupport

/// Runs the built binary in `cwd` (the package root by default); returns (exit code, stdout, stderr).
private func run(_ args: [String], cwd: URL = packageRoot) throws -> (Int32, String, String) {
    try runTibetTwin(args, cwd: cwd)
}

@Suite("tibet-twin maps layout")
struct MapsLayoutCLITests {
    @Test func csvOfTheExampleMaps() throws {
        let (code, out, err) = try run(["maps", "layout", "--csv"])
        #expect(code == 0, "\(err)")
        #expect(err.isEmpty)
        let lines = out.split(separator: "\n").map(String.init)
        #expect(lines.first == "device,intent,table,address,modicon,meaning")
        #expect(lines.contains(#"crane-01,move_left,coil,0,00001,"permit crane-01.move_left: 1 = permit, 0 = inhibit""#))
        #expect(lines.contains(#"crane-01,move_left,discrete,0,10001,"mirror of coil 0: permit crane-01.move_left: 1 = permit, 0 = inhibit""#))
        #expect(lines.contains(",,input,2,30003,number of devices (9)"))
        #expect(lines.contains(",,holding,0,40001,\"mirror of input register 0: heartbeat: +1 every evaluation tick, wraps at 65535\""))
        // Device 0 is the first map file by name: crane-01's block starts at input register 16.
        #expect(lines.contains("crane-01,,input,16,30017,\"reason code (0 OK, 65535 not evaluated)\""))
        #expect(lines.contains { $0.hasPrefix("crane-01,,input,20,30021,\"permit bits: bit 0 move_left, bit 1 hoist") })
        // Every row has six fields.
        for line in lines.dropFirst() {
            var fields = 1, quoted = false
            for c in line { if c == "\"" { quoted.toggle() } else if c == ",", !quoted { fields += 1 } }
            #expect(fields == 6, "\(line)")
        }
    }

    @Test func textTableAndConfigGiveTheSameRows() throws {
        let (code, out, _) = try run(["maps", "layout", "maps/"])
        #expect(code == 0)
        #expect(out.hasPrefix("DEVICE"))
        #expect(out.contains("crane-01"))
        let (code2, out2, err2) = try run(["maps", "layout", "--config", "tibet-twin.example.yaml"])
        #expect(code2 == 0, "\(err2)")
        #expect(out2 == out)
    }

    @Test func badMapsExitOneWithTheirErrors() throws {
        let fixture = "Tests/TibetTwinTests/Fixtures/maps/unknown-type.yaml"
        let (code, out, err) = try run(["maps", "layout", fixture])
        #expect(code == 1)
        #expect(out.isEmpty)
        #expect(err.hasPrefix("\(fixture):8:44: registers[0].type: unknown type"))
        let (code2, _, err2) = try run(["maps", "layout", "--config", "no/such/config.yaml"])
        #expect(code2 == 1)
        #expect(err2.hasPrefix("no/such/config.yaml:1:1: cannot read: ENOENT"))
    }

    @Test func configAndPathsTogetherIsAUsageError() throws {
        let (code, _, err) = try run(["maps", "layout", "--config", "tibet-twin.example.yaml", "maps/"])
        #expect(code == 2)
        #expect(err.contains("--config or map paths"))
    }
}
