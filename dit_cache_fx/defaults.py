"""Default cache settings of the demo and the bench on the shipped digits model (no imports: the command
line reads them before anything heavy is loaded)."""

DEMO_SETTINGS = "F1B0_W4_R0.12,F2B0_W4MC3_R0.2,F1B0_W4_R0.12_T1"
QUICK_SETTING = "F1B0_W2_R0.3"
