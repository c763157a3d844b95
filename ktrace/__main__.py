from ktrace.cli import main

raise SystemExit(main())
