from lock.cli import main

raise SystemExit(main())
