from pyflight.cli import main

raise SystemExit(main())
