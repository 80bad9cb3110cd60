import Foundation
import Testing
@testable import Appliance
import TibetTwin
import TestSupport

@Suite("Twin feed service", .serialized)
struct TwinFeedServiceTests {
    @Test func runsTheConfiguredFeedsTogether() async throws {
        let dir = Twin.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let file = dir + "/twin.jsonl"
        let sock = dir + "/twin.sock"
        let c = Collector()
        let service = try TwinFeedService(feeds: [.file(path: file, fromStart: true), .tcp(listen: HostPort(host: "127.0.0.1", port: 0)),
                                              .unix(path: sock)],
                                      pipeline: c.feed, logger: Twin.quiet)
        let run = Task { try await service.run() }
        let tcp = try #require(service.sources.compactMap { $0 as? TwinSocketSource }.first { if case .tcp = $0.endpoint { true } else { false } })
        // Generous: under a full parallel test run the cooperative pool can be busy for a while.
        #expect(await eventually(within: 60) { tcp.localPort != nil && access(sock, F_OK) == 0 })
        // One device per source, and the seq state is shared: a line replayed through another
        // source is still a replay.
        append(file, Twin.line("crane-01", seq: 1) + "\n")
        let t = try FeedClient(tcpPort: try #require(tcp.localPort))
        t.send(Twin.signedLine("crane-02", seq: 1) + "\n")
        let u = try FeedClient(unixPath: sock)
        u.send(Twin.line("hoist-77", seq: 1) + "\n")
        #expect(await eventually { c.count == 3 })
        u.send(Twin.line("crane-01", seq: 1) + "\n")
        #expect(await eventually { service.counters.reduce(0) { $0 + ($1.dropped[.replay] ?? 0) } == 1 })
        #expect(Set(c.all.map(\.device)) == ["crane-01", "crane-02", "hoist-77"])
        #expect(service.counters.map(\.source).sorted() == ["file:\(file)", "tcp:127.0.0.1:0", "unix:\(sock)"])
        run.cancel()
        _ = await run.result
        #expect(access(sock, F_OK) != 0, "the unix socket is removed when the service stops")
    }

    @Test func startFailureStopsWhatStarted() async throws {
        let dir = Twin.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let sock = dir + "/twin.sock"
        let service = try TwinFeedService(feeds: [.unix(path: sock), .unix(path: "/nonexistent-dir/twin.sock")],
                                      pipeline: Collector().feed, logger: Twin.quiet)
        await #expect(throws: TwinSourceError.self) { try await service.run() }
        #expect(access(sock, F_OK) != 0, "the first listener was stopped and its socket removed")
    }

    @Test func keysAreLoadedRelativeToTheMapFile() throws {
        let dir = Twin.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.createDirectory(atPath: dir + "/keys", withIntermediateDirectories: true)
        let pub = try KeyFiles.generate(out: dir + "/keys/crane-02")
        var map = Twin.map("crane-02", twinKey: "keys/crane-02.pub")
        map.sourceFile = dir + "/crane-02.yaml"
        let keys = try TwinKeys.load(for: [map, Twin.map("crane-01")])
        #expect(keys.count == 1)
        #expect(keys["crane-02"]?.key.rawRepresentation == pub.rawRepresentation)
        _ = try TwinFeedPipeline(maps: [map]) { _ in }

        var broken = map
        broken.twinKey = "keys/missing.pub"
        #expect(throws: KeyFileError.self) { try TwinKeys.load(for: [broken]) }
        try "not a key\n".write(toFile: dir + "/keys/bad.pub", atomically: true, encoding: .utf8)
        broken.twinKey = "keys/bad.pub"
        do {
            _ = try TwinKeys.load(for: [broken])
            Issue.record("a bad key was loaded")
        } catch {
            #expect(error.kind == .invalid)
        }
    }
}
