// SwiftPM entry point; the board build links EmbeddedEntry.c instead and calls the same function.
#if canImport(Glibc)
import Glibc
#endif

exit(punaMain(CommandLine.argc, CommandLine.unsafeArgv))
