"""Everything that draws: pictures from arrays (:mod:`.render`), matplotlib figures (:mod:`.plotting`),
the files a command writes (:mod:`.writers`) and the demo gallery (:mod:`.demo`)."""
