import CPuna
import PunaCore

@_cdecl("puna_cli_main")
public func punaMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> Int32 {
    var args: [String] = []
    for i in 0..<Int(argc) { if let p = argv[i] { args.append(String(cString: p)) } }
    do {
        let g = try GGUFFile(path: args.count > 1 ? args[1] : "/nonexistent")
        print("tensors \(g.tensors.count) keys \(g.keys.count)")
    } catch {
        print("error: \(error.message)")
        return 1
    }
    return 0
}
