package dev.fraqat.deploy

import android.app.Activity
import android.os.Bundle
import android.util.Log
import android.view.WindowManager
import android.widget.ScrollView
import android.widget.TextView
import dev.fraqat.deploy.core.BenchmarkEngine
import dev.fraqat.deploy.core.Protocol
import dev.fraqat.deploy.core.Schemas
import java.io.File
import kotlin.concurrent.thread

/**
 * The benchmark mode the CLI drives: `am start -S -n dev.fraqat.deploy/.BenchmarkActivity --es request <path>`,
 * `<path>` being `files/runs/<id>/request.json` in the app's external files folder. The work runs on a background
 * thread in [BenchmarkEngine] (core); this activity only shows its progress and keeps the screen on meanwhile.
 */
class BenchmarkActivity : Activity() {
    private lateinit var log: TextView

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        window.addFlags(WindowManager.LayoutParams.FLAG_KEEP_SCREEN_ON)
        log = TextView(this).apply { setPadding(32, 32, 32, 32); setTextIsSelectable(true) }
        setContentView(ScrollView(this).apply { addView(log) })
        val path = intent.getStringExtra(Protocol.REQUEST_EXTRA)
        if (path == null) {
            show("start me from the CLI (fraqat-deploy bench), or with:\nam start -S -n ${Protocol.PACKAGE}/${Protocol.ACTIVITY} --es request <request.json>")
            return
        }
        val filesDir = getExternalFilesDir(null) ?: run {
            show("no external files folder: is shared storage mounted?")
            return
        }
        val request = File(path)
        if (!request.canonicalPath.startsWith(filesDir.canonicalPath + File.separator)) {
            // never read (or write next to) files outside the app's own folder
            show("refusing $path: requests live under ${filesDir.absolutePath}")
            Log.e(TAG, "request outside the files folder: $path")
            return
        }
        thread(name = "fraqat-benchmark") {
            val schemas = Schemas.load { name -> assets.open("schemas/$name").bufferedReader().use { it.readText() } }
            val engine = BenchmarkEngine(filesDir, request, HtpBackend(this), schemas, AndroidProbe(this), log = { line ->
                Log.i(TAG, line)
                runOnUiThread { show(line) }
            })
            val result = engine.run()
            Log.i(TAG, "wrote $result")
            runOnUiThread {
                show("wrote $result")
                finish()
            }
        }
    }

    private fun show(line: String) {
        log.append(line + "\n")
    }

    companion object {
        private const val TAG = "fraqat"
    }
}
