from instyle.cli import main

raise SystemExit(main())
