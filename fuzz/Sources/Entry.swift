#if FUZZING
// libFuzzer's entry point (`make fuzz` builds with -sanitize=fuzzer -DFUZZING). SwiftPM links an
// executable's `main` to `<module>_main`, so that function starts libFuzzer's driver itself.
// The target is chosen once, from $TIBET_FUZZ_TARGET.
import Foundation

@_silgen_name("LLVMFuzzerRunDriver")
private func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<Int32>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32
) -> Int32

@_cdecl("tibet_twin_fuzz_main")
func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    var count = argc
    var vector = argv
    return LLVMFuzzerRunDriver(&count, &vector) { data, size in fuzzOne(data, size) }
}

nonisolated(unsafe) private var selected: FuzzTarget?

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    if selected == nil {
        let name = ProcessInfo.processInfo.environment["TIBET_FUZZ_TARGET"] ?? ""
        guard let t = FuzzTarget(rawValue: name) else {
            fatalError("set TIBET_FUZZ_TARGET to one of \(FuzzTarget.allCases.map(\.rawValue))")
        }
        selected = t
    }
    selected!.run(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}
#else
// Without libFuzzer: replays inputs (the committed corpus, or a crash libFuzzer saved) through
// the same checks. `make test` replays fuzz/corpus this way.
import Foundation

@main
struct FuzzReplay {
    static func main() {
        let args = CommandLine.arguments.dropFirst()
        guard let name = args.first, let target = FuzzTarget(rawValue: name), args.count >= 2 else {
            print("usage: tibet-twin-fuzz yaml|twin|modbus|opcua FILE_OR_DIR...")
            exit(2)
        }
        var count = 0
        for path in args.dropFirst() {
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
                print("no such file: \(path)")
                exit(2)
            }
            let files = isDir.boolValue
                ? ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted().map { path + "/" + $0 }
                : [path]
            for f in files {
                guard let data = FileManager.default.contents(atPath: f) else { continue }
                data.withUnsafeBytes { target.run($0) }
                count += 1
            }
        }
        print("\(target.rawValue): \(count) inputs replayed, every invariant held")
    }
}
#endif
