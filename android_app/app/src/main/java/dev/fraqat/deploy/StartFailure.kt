package dev.fraqat.deploy

import dev.fraqat.deploy.core.DeviceInfo
import dev.fraqat.deploy.core.ErrorKind
import dev.fraqat.deploy.core.FileTools
import dev.fraqat.deploy.core.Result
import dev.fraqat.deploy.core.ResultConfig
import dev.fraqat.deploy.core.ResultError
import dev.fraqat.deploy.core.State
import dev.fraqat.deploy.core.Status
import java.io.File

/**
 * A failure before the benchmark engine exists still ends in `result.json`: the protocol's schemas missing from
 * the APK's assets, ONNX Runtime's native library not loading (`UnsatisfiedLinkError` when `OrtEnvironment` is first
 * touched), any other error thrown while the engine is set up. Without it the CLI would wait for its timeout and
 * read a crash from logcat. The engine itself turns everything after that point (a missing context binary
 * included) into a result with the error.
 */
object StartFailure {
    /** Which error the CLI reports for [t], and its one-line message. */
    fun classify(t: Throwable): Pair<ErrorKind, String> = when (t) {
        is UnsatisfiedLinkError -> ErrorKind.HTP_UNAVAILABLE to
            "ONNX Runtime's native library did not load (${t.message?.lineSequence()?.firstOrNull()}): is this APK built for arm64-v8a?"
        is OutOfMemoryError -> ErrorKind.OUT_OF_MEMORY to "out of memory while starting the benchmark"
        is dev.fraqat.deploy.core.BenchError -> t.kind to (t.message ?: t.kind.json)
        else -> ErrorKind.INTERNAL to "the benchmark could not start: ${t::class.java.simpleName}: ${t.message?.lineSequence()?.firstOrNull()}"
    }

    /** Write `result.json` (and an error `status.json`) for the request at [request]; returns the result file. */
    fun write(request: File, t: Throwable, device: DeviceInfo, now: Long = System.currentTimeMillis()): File {
        val (kind, message) = classify(t)
        val dir = request.absoluteFile.parentFile
        val result = Result(
            requestId = dir.name,
            error = ResultError(kind, message),
            device = device,
            modelName = "?",
            componentHashes = emptyMap(),
            config = ResultConfig(0, 1, null, null, null, 0),
            errors = listOf(message),
        )
        val file = File(dir, "result.json")
        FileTools.writeJsonAtomic(file, result.toJson())
        runCatching { FileTools.writeJsonAtomic(File(dir, "status.json"), Status(dir.name, State.ERROR, 0, 0, message, now).toJson()) }
        return file
    }

    /** What this phone is, read without ONNX Runtime (which may be what failed). */
    fun device(build: () -> DeviceInfo): DeviceInfo = runCatching(build).getOrElse {
        DeviceInfo("?", "?", "?", null, "htp", null, null)
    }
}
