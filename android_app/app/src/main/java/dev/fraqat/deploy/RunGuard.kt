package dev.fraqat.deploy

import java.io.File
import java.io.IOException

/**
 * One request runs once. A configuration change (rotation, dark theme, a folded screen) destroys and recreates
 * [BenchmarkActivity] with the same intent, and Android may recreate it again after killing the process: each
 * `onCreate` would otherwise start the request anew. The claim is a marker file created atomically in the request's
 * run folder (`runs/<id>/.started`), so it holds across activity instances and process restarts; the CLI removes it,
 * with the stale result and status, before it starts a request again.
 */
object RunGuard {
    const val MARKER = ".started"

    /** True for the first caller only; false when [request] has been claimed before (this process or an earlier one). */
    @Throws(IOException::class)
    fun claim(request: File): Boolean {
        val marker = File(request.absoluteFile.parentFile, MARKER)
        return marker.createNewFile()
    }
}
