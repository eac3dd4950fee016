// Shared by every fuzz target (compiled into each by scripts/fuzz). Not part of any package target.
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Scratch files of one fuzzer process: PunaCore's readers take paths (they mmap), so a target
/// writes its input to a file first. /dev/shm keeps that off the disk.
enum Scratch {
    static let folder: String = {
        let base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp"
        let path = "\(base)/puna-fuzz-\(getpid())"
        mkdir(path, 0o700)
        atexit { Scratch.removeAll() }
        return path
    }()
    nonisolated(unsafe) static var written: Set<String> = []

    /// Write `count` bytes to `name` inside the scratch folder (a subfolder is made when named); returns the path.
    @discardableResult
    static func write(_ name: String, _ bytes: UnsafePointer<UInt8>?, _ count: Int) -> String {
        let path = folder + "/" + name
        if let slash = name.lastIndex(of: "/") {
            let sub = folder + "/" + String(name[..<slash])
            if mkdir(sub, 0o700) == 0 { written.insert(sub) }
        }
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        precondition(fd >= 0, "fuzz: cannot create \(path)")
        var done = 0
        while done < count, let bytes {
            let n = Glibc.write(fd, bytes + done, count - done)
            precondition(n > 0, "fuzz: cannot write \(path)")
            done += n
        }
        close(fd)
        written.insert(path)
        return path
    }

    @discardableResult
    static func write(_ name: String, _ bytes: [UInt8]) -> String {
        bytes.withUnsafeBufferPointer { write(name, $0.baseAddress, $0.count) }
    }

    static func removeAll() {
        // Files before folders (longer paths first).
        for p in written.sorted(by: { $0.count > $1.count }) { if unlink(p) != 0 { rmdir(p) } }
        rmdir(folder)
    }
}

/// A file of the fixed data the targets need (Fuzz/data/), found through PUNA_FUZZ_DATA
/// (scripts/fuzz sets it) or relative to the working directory.
func fuzzData(_ name: String) -> [UInt8] {
    let folder = getenv("PUNA_FUZZ_DATA").map { String(cString: $0) } ?? "Fuzz/data"
    let path = folder + "/" + name
    guard let f = fopen(path, "rb") else { fatalError("fuzz: cannot open \(path) (set PUNA_FUZZ_DATA to Fuzz/data)") }
    defer { fclose(f) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = chunk.withUnsafeMutableBytes { fread($0.baseAddress, 1, 65536, f) }
        if n == 0 { break }
        bytes += chunk[0..<n]
    }
    return bytes
}

/// Reads little pieces of the fuzz input in order; past the end everything is zero.
struct InputReader {
    let bytes: UnsafeBufferPointer<UInt8>
    var position = 0
    init(_ data: UnsafePointer<UInt8>?, _ size: Int) { bytes = UnsafeBufferPointer(start: data, count: size) }
    var remaining: Int { bytes.count - position }
    mutating func byte() -> UInt8 {
        guard position < bytes.count else { return 0 }
        defer { position += 1 }
        return bytes[position]
    }
    mutating func take(_ n: Int) -> [UInt8] {
        let k = min(max(n, 0), remaining)
        defer { position += k }
        return Array(bytes[position..<position + k])
    }
    mutating func rest() -> [UInt8] { take(remaining) }
}
